"""Telemetry: Cloud Logging lines, one trace across the Pub/Sub hop, and metrics.

Attached to the pipeline through :mod:`homing.hooks`; the pipeline never imports this package.

::

    from homing.telemetry import Telemetry, TraceContextMiddleware
    from homing.telemetry.metrics import PrometheusMetrics   # needs homing[metrics]
    from homing.telemetry.metrics_server import MetricsServer

    metrics = PrometheusMetrics()
    homing.hooks.append(Telemetry(homing.events, metrics=metrics))
    app.add_middleware(TraceContextMiddleware)         # the request's trace reaches its events
    metrics_server = MetricsServer(metrics, port=9464)  # 127.0.0.1 only; in the lifespan

``homing.telemetry.otel.OpenTelemetry`` (needs homing[otel]) adds spans and OTel metrics:
``Telemetry(homing.events, opentelemetry=OpenTelemetry())``.
"""

from homing.outcome import OUTCOMES
from homing.telemetry.context import (
    TRACEPARENT_ATTRIBUTE,
    TraceContext,
    TraceContextMiddleware,
    current_trace,
    parse_cloud_trace,
    parse_traceparent,
)
from homing.telemetry.hook import (
    UNAUTHENTICATED,
    UNREGISTERED,
    Telemetry,
    message_trace,
)
from homing.telemetry.logs import (
    CloudLoggingFormatter,
    LogHandler,
    TextFormatter,
    configure_logging,
)

__all__ = [
    "OUTCOMES",
    "TRACEPARENT_ATTRIBUTE",
    "UNAUTHENTICATED",
    "UNREGISTERED",
    "CloudLoggingFormatter",
    "LogHandler",
    "Telemetry",
    "TextFormatter",
    "TraceContext",
    "TraceContextMiddleware",
    "configure_logging",
    "current_trace",
    "message_trace",
    "parse_cloud_trace",
    "parse_traceparent",
]
