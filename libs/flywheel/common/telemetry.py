"""Telemetry for every service: JSON logs with trace ids, OpenTelemetry traces, Prometheus.

Trace context crosses gRPC in metadata and Kafka in the `traceparent` header, so
one trace follows a request through every topic it causes.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import start_http_server

PROPAGATOR = TraceContextTextMapPropagator()
# True once `setup_tracing` exports spans: served calls then record real spans; otherwise they only carry
# the trace context (ids), which costs a few microseconds instead of a recorded span per call.
_exporting = False
_tracer = trace.get_tracer("flywheel.rpc")
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
            set_exporting(True)
    trace.set_tracer_provider(provider)
    return provider


def set_exporting(on: bool) -> None:
    """Served calls record real spans (on: something exports them) or carry the trace context only."""
    global _exporting
    _exporting = on


class ServerSpan:
    """The trace context of one served call, current until `end` (see `server_span`)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def fail(self, exc: BaseException) -> None:
        if self.span.is_recording():
            self.span.record_exception(exc)
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))

    def end(self) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        self.span.end()


def server_span(name: str, traceparent: str | None) -> ServerSpan:
    """Make the trace of a served call current: a child of the caller's `traceparent` (a new trace
    without one), so logs and the events it causes carry that trace. A recorded SERVER span when spans
    are exported (`set_exporting`), else only its context: a fresh span id in the caller's trace."""
    if _exporting:
        span: Span = _tracer.start_span(name, context=context_from(traceparent or ""), kind=SpanKind.SERVER,
                                        attributes={"rpc.system": "grpc", "rpc.method": name})
    else:
        trace_id, flags = 0, 1
        if traceparent and len(traceparent) == 55 and traceparent[2] == "-":
            try:
                trace_id, flags = int(traceparent[3:35], 16), int(traceparent[53:55], 16)
            except ValueError:
                trace_id, flags = 0, 1
        span = NonRecordingSpan(SpanContext(trace_id or random.getrandbits(128), random.getrandbits(64),
                                            is_remote=False, trace_flags=TraceFlags(flags)))
    return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span)))


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve Prometheus `/metrics` on `host:port` (0 = off)."""
    if port:
        start_http_server(port, addr=host)


def current_traceparent() -> str:
    """The W3C traceparent of the current span, or '' outside a span (what `PROPAGATOR.inject` writes, formatted
    here directly: it runs on every outgoing call and event)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def context_from(carrier: Mapping[str, str] | str) -> otel_context.Context:
    """An OpenTelemetry context from a traceparent string or a header/metadata mapping."""
    if isinstance(carrier, str):
        carrier = {"traceparent": carrier} if carrier else {}
    return PROPAGATOR.extract(dict(carrier))
