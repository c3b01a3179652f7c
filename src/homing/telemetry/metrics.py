"""Counters and histograms of published and pushed events, as Prometheus text.

Built on ``prometheus-client`` (``pip install homing[metrics]``), in a registry of the
instance's own (never the process-wide default), served by :class:`MetricsEndpoint`. Label
values come only from registered event types and a fixed list of outcomes, so no request,
authenticated or not, can create a new series.

==========================================  =================================================
``homing_events_published_total``           events the broker accepted, by ``event_type``
``homing_publish_failures_total``           publishes that failed, by ``event_type``
``homing_pushes_total``                     pushes answered, by ``event_type`` and ``outcome``
``homing_push_duration_seconds``            time from receipt to answer, by ``event_type``
``homing_message_age_seconds``              now minus the message's publish time, at handling
==========================================  =================================================
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "homing's Prometheus metrics need prometheus-client: pip install 'homing[metrics]'"
    ) from exc

from homing.http import Answer, Receive, Scope, Send, method_not_allowed, send_answer
from homing.outcome import OTHER, OUTCOMES

DURATION_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
DURATION_BUCKETS += (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: From "just published" to Pub/Sub's 7-day retention: a backlog shows in the upper buckets.
AGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
AGE_BUCKETS += (1800, 3600, 10800, 43200, 86400, 259200, 604800)


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: "le"
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip(
            (*map(str, map(float, self.bounds)), "+Inf"), self.counts, strict=True
        ):
            running += count
            out.append((bound, running))
        return out


class _PushSeries:
    """One event type's push counts by outcome, and its two histograms."""

    __slots__ = ("age", "duration", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.duration = _Histogram(DURATION_BUCKETS)
        self.age = _Histogram(AGE_BUCKETS)


class PrometheusMetrics:
    """The event metrics of one service, rendered as Prometheus text.

    Recording is a few list and dict operations (it is on every push's path, on the event
    loop's thread); ``prometheus-client`` writes the exposition format when scraped.

    Args:
        registry: where the metrics are registered (a new ``CollectorRegistry`` unless given).
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._published: dict[str, list[int]] = {}  # by event type: [accepted, failed]
        self._pushes: dict[str, _PushSeries] = {}  # by event type
        self.registry.register(_Exposition(self))

    def record_push(
        self, event_type: str, outcome: str, seconds: float, age: float | None = None
    ) -> None:
        """Count one answered push. ``event_type`` must already be a bounded label value."""
        series = self._pushes.get(event_type)
        if series is None:
            series = self._pushes[event_type] = _PushSeries()
        outcomes = series.outcomes
        if outcome in outcomes:  # (only bounded names are ever keys)
            outcomes[outcome] += 1
        else:
            key = outcome if outcome in OUTCOMES else OTHER
            outcomes[key] = outcomes.get(key, 0) + 1
        series.duration.observe(seconds)
        if age is not None:
            series.age.observe(age if age > 0.0 else 0.0)

    def record_publish(self, event_type: str, *, failed: bool) -> None:
        counts = self._published.get(event_type)
        if counts is None:
            counts = self._published[event_type] = [0, 0]
        counts[failed] += 1

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))

    def endpoint(self) -> MetricsEndpoint:
        """An ASGI app serving :meth:`render` on ``GET``."""
        return MetricsEndpoint(self)

    def collect(self) -> Iterator[Metric]:
        published = CounterMetricFamily(
            "homing_events_published",
            "Events the broker accepted, by event type.",
            labels=["event_type"],
        )
        failures = CounterMetricFamily(
            "homing_publish_failures",
            "Publishes that failed (the request failed or the event waits in the outbox).",
            labels=["event_type"],
        )
        for event_type, (accepted, failed) in sorted(self._published.items()):
            published.add_metric([event_type], accepted)
            failures.add_metric([event_type], failed)
        pushes = CounterMetricFamily(
            "homing_pushes",
            "Pushes answered, by event type and outcome.",
            labels=["event_type", "outcome"],
        )
        for event_type, series in sorted(self._pushes.items()):
            for outcome, count in sorted(series.outcomes.items()):
                pushes.add_metric([event_type, outcome], count)
        duration = HistogramMetricFamily(
            "homing_push_duration_seconds",
            "Time from a push's receipt to its answer, handler included, by event type.",
            labels=["event_type"],
        )
        age = HistogramMetricFamily(
            "homing_message_age_seconds",
            "Now minus the message's publish time when its push is handled, by event type.",
            labels=["event_type"],
        )
        for event_type, series in sorted(self._pushes.items()):
            duration.add_metric([event_type], series.duration.cumulative(), series.duration.total)
            age.add_metric([event_type], series.age.cumulative(), series.age.total)
        yield from (published, failures, pushes, duration, age)


class _Exposition(Collector):
    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


_NOT_ALLOWED = method_not_allowed("GET, HEAD")
_EXPOSITION_TYPE = (b"content-type", CONTENT_TYPE_LATEST.encode("latin-1"))


class MetricsEndpoint:
    """``GET``: the metrics as Prometheus text. Mount it where your scraper looks (opt-in)::

    app.add_route("/metrics", metrics.endpoint(), methods=["GET"])
    """

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send_answer(send, _NOT_ALLOWED)
            return
        body = self.metrics.render()
        headers = (_EXPOSITION_TYPE, (b"content-length", b"%d" % len(body)))
        await send_answer(send, Answer(200, headers, body), head=method == "HEAD")
