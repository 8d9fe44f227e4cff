"""Telemetry for every service: JSON logs with trace ids, OpenTelemetry traces, Prometheus.

Trace context crosses gRPC in metadata and Kafka in the `traceparent` header, so
one trace follows a request through every topic it causes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import start_http_server

PROPAGATOR = TraceContextTextMapPropagator()
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current trace and span ids when there is a span."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def setup_tracing(service: str, otlp_endpoint: str = "") -> TracerProvider:
    """A tracer provider for `service`; spans are exported over OTLP when an endpoint is set."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"flywheel-{service}"}))
    if otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:  # the exporter is an optional dependency
            logging.getLogger(__name__).warning(
                "FLYWHEEL_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp is not installed; not exporting")
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve Prometheus `/metrics` on `host:port` (0 = off)."""
    if port:
        start_http_server(port, addr=host)


def current_traceparent() -> str:
    """The W3C traceparent of the current span, or '' outside a span."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def context_from(carrier: Mapping[str, str] | str) -> otel_context.Context:
    """An OpenTelemetry context from a traceparent string or a header/metadata mapping."""
    if isinstance(carrier, str):
        carrier = {"traceparent": carrier} if carrier else {}
    return PROPAGATOR.extract(dict(carrier))
