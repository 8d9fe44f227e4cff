"""The life of a service process, the same for every service: logs, traces, metrics,
start, wait for SIGTERM/SIGINT (health turns NOT_SERVING first), stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flywheel.common.rpc import wait_for_shutdown_signal
from flywheel.common.settings import ServiceSettings
from flywheel.common.telemetry import setup_logging, setup_tracing, start_metrics_server

log = logging.getLogger(__name__)


class ServiceApp(Protocol):
    """A service's composition root: `start` returns once it serves, `stop` drains and closes."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=ServiceSettings)


def run_service(name: str, settings: S, make_app: Callable[[S], ServiceApp], *,
                loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Run one service process until it is told to stop; `loop_factory`: its event loop (e.g. uvloop's)."""
    setup_logging(name, settings.log_level, settings.log_json)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(name, settings, make_app))


async def _serve(name: str, settings: Any, make_app: Callable[[Any], ServiceApp]) -> None:
    setup_tracing(name, settings.otlp_endpoint)
    # Metrics listen where the service does (gRPC, or HTTP for a service without gRPC): loopback on one
    # machine, every interface in a container.
    host = getattr(settings, "grpc_host", None) or getattr(settings, "http_host", "127.0.0.1")
    exposed = host == "0.0.0.0"
    start_metrics_server(getattr(settings, "metrics_port", 0), "0.0.0.0" if exposed else "127.0.0.1")
    app = make_app(settings)
    await app.start()
    try:
        await wait_for_shutdown_signal()
        log.info("shutting down", extra={"service": name})
    finally:
        await app.stop()
