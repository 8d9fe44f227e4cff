"""Several serving processes on one machine: `workers > 1` makes `python -m flywheel.inference` a
supervisor of that many worker processes.

One Python process serves at most one core (the GIL), and a small model's request is nearly all Python
(gRPC/HTTP handling, conversion, logging), so the cores are used by processes, not threads. Each worker
is a whole inference server (`run_service` + `InferenceApp`) with its own model copies, models.promoted
consumer (its own group: every worker reacts to every promotion) and prediction logger; all bind the
same gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads connections over them. The supervisor:

- picks concrete ports first when 0 is configured (every worker must bind the same one);
- gives each worker a loopback metrics port and serves the sum of their metrics on `metrics_port`
  (counters, histograms and gauges add up across workers), plus `flywheel_inference_workers` (started)
  and `flywheel_inference_serving` (summed from the workers: how many serve);
- restarts a worker that dies (with a backoff), and on SIGTERM/SIGINT stops them all (each drains as a
  single server does) before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Metric, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from flywheel.common.tasks import within
from flywheel.common.telemetry import setup_logging
from flywheel.inference.config import InferenceSettings

log = logging.getLogger(__name__)

WORKER_ENV = "FLYWHEEL_INFERENCE_WORKER_INDEX"
STOP_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = (1.0, 30.0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_index() -> int | None:
    """This process's worker index when a supervisor started it, else None."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value else None


class Worker:
    def __init__(self, index: int, env: dict[str, str], metrics_port: int) -> None:
        self.index = index
        self.env = env
        self.metrics_port = metrics_port
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(sys.executable, "-m", "flywheel.inference", env=self.env)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class SummedMetrics(Collector):
    """The workers' /metrics, summed per sample (name + labels)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple, float]] = {}
        for w in self.workers:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=2) as answer:
                    text = answer.read().decode()
            except OSError:
                continue  # a worker starting or restarting: its counts come back with it
            for family in text_string_to_metric_families(text):
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    sums[family.name] = {}
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    sums[family.name][key] = sums[family.name].get(key, 0.0) + sample.value
        for name, metric in families.items():
            metric.samples = [Sample(sample, dict(labels), value, None, None)
                              for (sample, labels), value in sums[name].items()]
            yield metric
        started = Metric("flywheel_inference_workers", "Worker processes running.", "gauge")
        started.samples = [Sample("flywheel_inference_workers", {}, float(sum(
            1 for w in self.workers if w.process is not None and w.process.returncode is None)), None, None)]
        yield started


def worker_env(settings: InferenceSettings, index: int, grpc_port: int, http_port: int,
               metrics_port: int) -> dict[str, str]:
    return {**os.environ, WORKER_ENV: str(index), "FLYWHEEL_INFERENCE_WORKERS": str(settings.workers),
            "FLYWHEEL_INFERENCE_GRPC_PORT": str(grpc_port), "FLYWHEEL_INFERENCE_HTTP_PORT": str(http_port),
            "FLYWHEEL_INFERENCE_METRICS_PORT": str(metrics_port),
            "FLYWHEEL_INFERENCE_CONSUMER_GROUP": f"{settings.consumer_group}-w{index}"}


def supervise(settings: InferenceSettings) -> None:
    """Run `settings.workers` worker processes until SIGTERM/SIGINT (see the module docstring)."""
    setup_logging("inference", settings.log_level, settings.log_json)
    asyncio.run(_supervise(settings))


async def _supervise(settings: InferenceSettings) -> None:
    grpc_port = settings.grpc_port or free_port(settings.grpc_host)
    http_port = settings.http_port or free_port(settings.http_host)
    workers = [Worker(i, {}, free_port()) for i in range(settings.workers)]
    for w in workers:
        w.env = worker_env(settings, w.index, grpc_port, http_port, w.metrics_port)
    if settings.metrics_port:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SummedMetrics(workers))
        host = "0.0.0.0" if settings.grpc_host == "0.0.0.0" else "127.0.0.1"
        start_http_server(settings.metrics_port, addr=host, registry=registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("inference supervisor starting workers", extra={
        "workers": settings.workers, "grpc": f"{settings.grpc_host}:{grpc_port}",
        "http": f"{settings.http_host}:{http_port}"})
    for w in workers:
        await w.start()
    watchers = [asyncio.create_task(_watch(w, stop)) for w in workers]
    await stop.wait()
    log.info("inference supervisor stopping workers")
    for w in workers:
        w.signal(signal.SIGTERM)
    _, pending = await asyncio.wait(watchers, timeout=STOP_TIMEOUT_S)
    for w in workers:
        w.signal(signal.SIGKILL)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _watch(w: Worker, stop: asyncio.Event) -> None:
    """Wait for the worker to exit; restart it (with a growing pause) unless the supervisor is stopping."""
    backoff = RESTART_BACKOFF_S[0]
    while True:
        assert w.process is not None
        started = time.monotonic()
        code = await w.process.wait()
        if stop.is_set():
            return
        if time.monotonic() - started > 60:
            backoff = RESTART_BACKOFF_S[0]  # it had been running fine: not a crash loop
        log.error("inference worker exited; restarting it", extra={"worker": w.index, "code": code,
                                                                      "restart_in_s": backoff})
        with contextlib.suppress(TimeoutError):
            await within(stop.wait(), backoff)
        if stop.is_set():
            return
        backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
        w.restarts += 1
        await w.start()
