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

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "homing's Prometheus metrics need prometheus-client: pip install 'homing[metrics]'"
    ) from exc

#: Every outcome a push can have; anything else is counted as ``other``.
OUTCOMES = frozenset(
    {
        "done",
        "duplicate",
        "quarantined",
        "retry",
        "handler_failed",
        "in_progress",
        "store_unavailable",
        "unknown_event",
        "malformed",
        "unauthenticated",
        "forbidden",
        "rejected",
        "too_large",
    }
)

DURATION_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
DURATION_BUCKETS += (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: From "just published" to Pub/Sub's 7-day retention: a backlog shows in the upper buckets.
AGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
AGE_BUCKETS += (1800, 3600, 10800, 43200, 86400, 259200, 604800)


class PrometheusMetrics:
    """The event metrics of one service, rendered as Prometheus text.

    Args:
        registry: where the metrics live (a new ``CollectorRegistry`` unless given).
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._published = Counter(
            "homing_events_published",
            "Events the broker accepted, by event type.",
            ["event_type"],
            registry=self.registry,
        )
        self._publish_failures = Counter(
            "homing_publish_failures",
            "Publishes that failed (the request failed or the event waits in the outbox).",
            ["event_type"],
            registry=self.registry,
        )
        self._pushes = Counter(
            "homing_pushes",
            "Pushes answered, by event type and outcome.",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "homing_push_duration_seconds",
            "Time from a push's receipt to its answer, handler included, by event type.",
            ["event_type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._age = Histogram(
            "homing_message_age_seconds",
            "Now minus the message's publish time when its push is handled, by event type.",
            ["event_type"],
            buckets=AGE_BUCKETS,
            registry=self.registry,
        )
        # Children by label values: labels() costs more than the increment itself.
        self._push_children: dict[tuple[str, str], Any] = {}
        self._type_children: dict[str, tuple[Any, Any]] = {}

    def record_push(
        self, event_type: str, outcome: str, seconds: float, age: float | None = None
    ) -> None:
        """Count one answered push. ``event_type`` must already be a bounded label value."""
        if outcome not in OUTCOMES:
            outcome = "other"
        key = (event_type, outcome)
        counter = self._push_children.get(key)
        if counter is None:
            counter = self._push_children[key] = self._pushes.labels(event_type, outcome)
        counter.inc()
        histograms = self._type_children.get(event_type)
        if histograms is None:
            histograms = self._type_children[event_type] = (
                self._duration.labels(event_type),
                self._age.labels(event_type),
            )
        histograms[0].observe(seconds)
        if age is not None:
            histograms[1].observe(max(age, 0.0))

    def record_publish(self, event_type: str, *, failed: bool) -> None:
        (self._publish_failures if failed else self._published).labels(event_type).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))

    def endpoint(self) -> MetricsEndpoint:
        """An ASGI app serving :meth:`render` on ``GET``."""
        return MetricsEndpoint(self)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsEndpoint:
    """``GET``: the metrics as Prometheus text. Mount it where your scraper looks (opt-in)::

    app.add_route("/metrics", metrics.endpoint(), methods=["GET"])
    """

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
            headers = [(b"content-type", b"text/plain"), (b"allow", b"GET, HEAD")]
        else:
            status, body = 200, self.metrics.render()
            headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
