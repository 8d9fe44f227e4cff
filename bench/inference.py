"""Benchmark `inference`: the same TorchScript MLP (30 numeric inputs) served by Flywheel's inference
service and by MLServer 1.7.1, next to a no-op OIP server (the ceiling), driven by the same tritonclient load.

The peers run side by side, each a subprocess on free loopback ports (see PEERS): Flywheel with
prediction logging to Kafka on (every request -> one `predictions.logged` event on the run's broker), the
same with logging off (sample rate 0), with 2 worker processes, and with adaptive batching on; MLServer
from its own venv (`bench/mlserver_runtime/.venv`, created on first use) with parallel_workers 0 (its best
setting here: the others are probed after the main measurement, see MLSERVER_PROBES); the no-op
server (`bench/noop_server.py`: canned answers, nothing else) whose numbers are what this load reaches
against a Python server on this machine; and the same server running the model's forward and nothing else,
the floor of any server of this model on this stack. Flywheel loads the model from a registry running in this
process (registered + promoted to champion); MLServer gets `model.pt` extracted from the same artifact.
The load comes from one driver subprocess (`python -m bench.inference drive`: tritonclient cannot share a
process with Flywheel's generated OIP protobuf module), one client per calling thread, and the cases of
one run are interleaved across the peers (the first rotating) so drift hits all of them. A thread of
this process samples the resident memory and CPU (psutil, process + children) of each peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.common import (
    REPEATS,
    BenchResult,
    Context,
    drop_schemas,
    markdown_table,
    median,
    percentile,
    ratio,
    rounded,
    significant,
    thousands,
)

NAME = "inference"
MODEL = "bench-mlp"
N_NUMERIC = 30
CONCURRENCY = 8
HERE = Path(__file__).parent
RUNTIME_DIR = HERE / "mlserver_runtime"
MLSERVER_VENV = RUNTIME_DIR / ".venv"  # ignored by the root .gitignore (.venv/)
# torch: exactly the CPU wheel on disk. uvloop < 0.22: with 0.22+ MLServer's parallel inference workers
# (parallel_workers > 0, its default is 1) die at start (asyncio.get_event_loop() raises under uvloop's policy).
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "torch==2.13.0", "uvloop==0.21.0")
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
SAMPLE_EVERY_S = 0.02
FLYWHEEL_ON, FLYWHEEL_OFF, FLYWHEEL_BATCHING = "flywheel", "flywheel_nolog", "flywheel_batching"
FLYWHEEL_WORKERS = "flywheel_workers"
MLSERVER, MLSERVER_BEST, NOOP, MODEL_ONLY = "mlserver", "mlserver_best", "noop", "model_only"
# Flywheel as deployed on this 2-core machine, where the load driver, the broker and the database take
# their share of the cores: one serving process. The `flywheel_workers` peer runs WORKERS processes.
FLYWHEEL_SETTINGS = json.loads(os.environ.get("BENCH_INFERENCE_FLYWHEEL", "") or '{"workers": "1"}')
WORKERS = 2
BATCHING_SETTINGS = {"max_batch_size": "32", "max_batch_wait_ms": "0"}
# MLServer's other candidate for its best setting here, a peer of every case: adaptive batching (16 rows,
# 1 ms). Against parallel_workers 0 without batching (the `mlserver` peer, as the first comparison ran it) it
# won some concurrent cases in some runs and lost the sequential ones; parallel_workers 1 and 2 lost every
# time (probe table). BENCH_INFERENCE_MLSERVER_BEST='{"settings": {...}, "model": {...}}' tries another.
_BEST = json.loads(os.environ.get("BENCH_INFERENCE_MLSERVER_BEST", "") or "{}")
MLSERVER_BEST_SETTINGS: dict[str, Any] = _BEST.get("settings", {"parallel_workers": 0})
MLSERVER_BEST_MODEL: dict[str, Any] = _BEST.get("model", {"max_batch_size": 16, "max_batch_time": 0.001})
# MLServer's other settings, tried on the 8-caller cases after the main measurement (one run each).
MLSERVER_PROBES: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("parallel_workers 1 (MLServer's default)", {"parallel_workers": 1}, {}),
    ("parallel_workers 2", {"parallel_workers": 2}, {}),
)


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    kind: str  # flywheel | mlserver | noop | model_only
    logging_on: bool = False
    settings: tuple[tuple[str, Any], ...] = ()  # FLYWHEEL_INFERENCE_* / MLServer settings.json
    model_settings: tuple[tuple[str, Any], ...] = ()  # MLServer model-settings.json


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


PEERS = (
    Peer(FLYWHEEL_ON, "Flywheel (logging on)", "flywheel", True, tuple(FLYWHEEL_SETTINGS.items())),
    Peer(FLYWHEEL_OFF, "Flywheel (logging off)", "flywheel", False, tuple(FLYWHEEL_SETTINGS.items())),
    Peer(FLYWHEEL_WORKERS, f"Flywheel (logging on, {WORKERS} workers)", "flywheel", True,
         tuple({**FLYWHEEL_SETTINGS, "workers": str(WORKERS)}.items())),
    Peer(FLYWHEEL_BATCHING, f"Flywheel (logging on, batching {BATCHING_SETTINGS['max_batch_size']} rows / "
                            f"{BATCHING_SETTINGS['max_batch_wait_ms']} ms)", "flywheel", True,
         tuple({**FLYWHEEL_SETTINGS, **BATCHING_SETTINGS}.items())),
    Peer(MLSERVER, "MLServer 1.7.1 (parallel_workers 0)", "mlserver", settings=(("parallel_workers", 0),)),
    Peer(MLSERVER_BEST, f"MLServer 1.7.1 ({_describe({**MLSERVER_BEST_SETTINGS, **MLSERVER_BEST_MODEL})})",
         "mlserver", settings=tuple(MLSERVER_BEST_SETTINGS.items()), model_settings=tuple(MLSERVER_BEST_MODEL.items())),
    Peer(NOOP, "no-op OIP server (ceiling)", "noop"),
    Peer(MODEL_ONLY, "no-op OIP server + the model's forward (floor of any server of this model)", "model_only"),
)
LABELS = {p.key: p.label for p in PEERS}


@dataclass(frozen=True)
class Case:
    protocol: str  # "grpc" | "rest"
    callers: int
    rows: int
    requests: int

    @property
    def label(self) -> str:
        who = "sequential" if self.callers == 1 else f"{self.callers} concurrent"
        return f"{self.protocol}, {who}, {self.rows} row{'s' if self.rows > 1 else ''}"

    @property
    def tag(self) -> str:
        return f"{self.protocol}_{self.callers}callers_{self.rows}rows"


def cases(quick: bool) -> list[Case]:
    sequential, concurrent, many, batch = (300, 800, 1_600, 300) if quick else (2_000, 4_000, 6_400, 1_000)
    return [case for protocol in ("grpc", "rest") for case in (
        Case(protocol, 1, 1, sequential), Case(protocol, CONCURRENCY, 1, concurrent),
        Case(protocol, 32, 1, many), Case(protocol, 1, 8, batch))]


# -- the MLServer venv ------------------------------------------------------------------------------


def mlserver_executable() -> Path:
    return MLSERVER_VENV / "bin" / "mlserver"


def ensure_mlserver_venv() -> str:
    """Create bench/mlserver_runtime/.venv with mlserver + torch (CPU) unless it is there; what was done."""
    stamp = MLSERVER_VENV / ".bench-requirements"
    wanted = " ".join(MLSERVER_REQUIREMENTS)
    if mlserver_executable().exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return "present"
    python = os.environ.get("PYTHON", "python3.11")
    subprocess.run([python, "-m", "venv", str(MLSERVER_VENV)], check=True)
    subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *MLSERVER_REQUIREMENTS],
                   check=True)
    stamp.write_text(wanted + "\n")
    return "created"


# -- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    key: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    log_file: IO[bytes]
    workers: int = 1  # Flywheel's serving processes: ready once all of them serve

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(key: str, argv: list[str], env: dict[str, str], scratch: Path, ports: tuple[int, int, int]) -> Server:
    log_path = scratch / f"{key}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=scratch, start_new_session=True)
    return Server(key, process, *ports, log_path, log_file)


def start_flywheel(ctx: Context, key: str, registry_addr: str, *, logging_on: bool, scratch: Path,
                   settings: dict[str, str] | None = None, extra_env: dict[str, str] | None = None) -> Server:
    """`settings`: more FLYWHEEL_INFERENCE_* variables (e.g. {"WORKERS": "2"}); `extra_env`: more variables
    (e.g. a PYTHONPATH serving another checkout's code, for before/after profiles)."""
    ports = free_port(), free_port(), free_port()
    env = {**os.environ,
           "FLYWHEEL_INFERENCE_GRPC_PORT": str(ports[0]), "FLYWHEEL_INFERENCE_HTTP_PORT": str(ports[1]),
           "FLYWHEEL_INFERENCE_METRICS_PORT": str(ports[2]), "FLYWHEEL_INFERENCE_MODELS": json.dumps([MODEL]),
           "FLYWHEEL_REGISTRY_ADDR": registry_addr, "FLYWHEEL_KAFKA_BOOTSTRAP": ctx.infra.kafka_bootstrap,
           "FLYWHEEL_DATABASE_URL": ctx.infra.database_url, "FLYWHEEL_HOME": str(ctx.infra.home),
           "FLYWHEEL_INFERENCE_DB_SCHEMA": f"bench_{key}_{ctx.run_id}",
           "FLYWHEEL_INFERENCE_CONSUMER_GROUP": f"bench-{key}-{ctx.run_id}",
           "FLYWHEEL_INFERENCE_LOG_SAMPLE_RATE": json.dumps({MODEL: 1.0 if logging_on else 0.0}),
           "FLYWHEEL_LOG_LEVEL": "WARNING", "FLYWHEEL_TOKEN": ctx.infra.admin_token,
           # As on `make run`'s loopback: stock clients (tritonclient, like MLServer's) send no token.
           "FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT": "true",
           **{f"FLYWHEEL_INFERENCE_{k.upper()}": v for k, v in (settings or {}).items()}, **(extra_env or {})}
    server = spawn(key, [sys.executable, "-m", "flywheel.inference"], env, scratch, ports)
    server.workers = int((settings or {}).get("workers", 1))
    return server


def start_mlserver(peer: Peer, model_pt: bytes, scratch: Path) -> Server:
    ports = free_port(), free_port(), free_port()
    root = scratch / peer.key
    (root / MODEL).mkdir(parents=True, exist_ok=True)
    (root / MODEL / "model.pt").write_bytes(model_pt)
    (root / "settings.json").write_text(json.dumps({
        "debug": False, "parallel_workers": 0, "host": "127.0.0.1", "grpc_port": ports[0], "http_port": ports[1],
        "metrics_port": ports[2], "metrics_dir": str(root / ".metrics"), "load_models_at_startup": True,
        **dict(peer.settings)}))
    (root / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "bench_torchscript.TorchScriptRuntime",
        "parameters": {"uri": "./model.pt", "version": "1"}, **dict(peer.model_settings)}))
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    for variable in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(variable, None)
    return spawn(peer.key, [str(mlserver_executable()), "start", str(root)], env, scratch, ports)


def start_noop(key: str, scratch: Path, model_pt: bytes | None = None) -> Server:
    """bench/noop_server.py: canned answers, or with `model_pt` the model's (the forward and nothing else)."""
    ports = free_port(), free_port(), 0
    argv = [sys.executable, str(HERE / "noop_server.py"), str(ports[0]), str(ports[1])]
    if model_pt is not None:
        path = scratch / f"{key}-model.pt"
        path.write_bytes(model_pt)
        argv.append(str(path))
    return spawn(key, argv, dict(os.environ), scratch, ports)


def start_peer(ctx: Context, peer: Peer, registry_addr: str, model_pt: bytes, scratch: Path) -> Server:
    if peer.kind == "flywheel":
        return start_flywheel(ctx, peer.key, registry_addr, logging_on=peer.logging_on, scratch=scratch,
                              settings=dict(peer.settings))
    if peer.kind == "mlserver":
        return start_mlserver(peer, model_pt, scratch)
    return start_noop(peer.key, scratch, model_pt if peer.kind == "model_only" else None)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(server: Server) -> float:
    """Seconds until the server and its model answer ready on REST; fails if the process dies."""
    start = time.perf_counter()
    while time.perf_counter() - start < READY_TIMEOUT:
        if server.process.poll() is not None:
            raise RuntimeError(f"{LABELS[server.key]} exited with {server.process.returncode}:\n{server.log_tail()}")
        base = f"http://{server.http_url}/v2"
        if http_ok(f"{base}/health/ready") and http_ok(f"{base}/models/{MODEL}/ready") and (
                server.workers <= 1
                or scrape(server, ("flywheel_inference_serving",)).get("flywheel_inference_serving") == server.workers):
            return time.perf_counter() - start
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{LABELS[server.key]} not ready after {READY_TIMEOUT:.0f}s:\n{server.log_tail()}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    server.log_file.close()


def scrape(server: Server, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Prometheus samples of the server whose names start with one of `prefixes` (summed per name)."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(prefixes):
                    sample, _, value = line.rpartition(" ")
                    values[sample] = values.get(sample, 0.0) + float(value)
    return values


# -- resident memory and CPU of the servers ---------------------------------------------------------


class MemorySampler:
    """Samples the RSS of each server (process + its children) every SAMPLE_EVERY_S in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.processes = {key: psutil.Process(pid) for key, pid in pids.items()}
        self.peak_mib: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def rss_mib(self, key: str) -> float:
        import psutil

        process = self.processes[key]
        total = 0
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return total / (1 << 20)

    def cpu_s(self, key: str) -> float:
        import psutil

        process, total = self.processes[key], 0.0
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    times = child.cpu_times()
                    total += times.user + times.system
        return total

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for key in self.processes:
                self.peak_mib[key] = max(self.peak_mib[key], self.rss_mib(key))
            self.samples += 1

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the load driver (a subprocess: tritonclient's protobuf symbols clash with Flywheel's) ----------


class Driver:
    """`python -m bench.inference drive`: one JSON command per line in, one JSON result per line out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.inference", "drive"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, cwd=HERE.parent, text=True, bufsize=1)
        self._lock = threading.Lock()

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        with self._lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load driver exited with {self.process.poll()}")
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load driver: {result['error']}")
        return result

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _rows(rows: int) -> Any:
    import numpy as np

    return np.random.default_rng(rows).standard_normal((rows, N_NUMERIC)).astype(np.float32)


def _client(protocol: str, url: str) -> tuple[Any, Any]:
    """(client, infer(numeric) -> probability) for one calling thread."""
    if protocol == "grpc":
        import tritonclient.grpc as tg

        client = tg.InferenceServerClient(url)
        outputs = [tg.InferRequestedOutput("probability")]

        def infer_grpc(numeric: Any) -> Any:
            request_input = tg.InferInput("numeric", list(numeric.shape), "FP32")
            request_input.set_data_from_numpy(numeric)
            return client.infer(MODEL, [request_input], outputs=outputs).as_numpy("probability")

        return client, infer_grpc
    import tritonclient.http as th

    client = th.InferenceServerClient(url, connection_timeout=30.0, network_timeout=30.0)
    outputs = [th.InferRequestedOutput("probability", binary_data=False)]

    def infer_rest(numeric: Any) -> Any:
        # JSON tensors both ways: MLServer does not take the binary tensor extension.
        request_input = th.InferInput("numeric", list(numeric.shape), "FP32")
        request_input.set_data_from_numpy(numeric, binary_data=False)
        return client.infer(MODEL, [request_input], outputs=outputs).as_numpy("probability")

    return client, infer_rest


def _measure(protocol: str, url: str, rows: int, callers: int, requests: int, warmup: int) -> dict[str, Any]:
    """Latencies (ms) of `requests` calls split over `callers` threads, after `warmup` calls per thread."""
    numeric = _rows(rows)
    per_caller = requests // callers
    barrier = threading.Barrier(callers + 1)
    samples: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []

    def caller(index: int) -> None:
        client, infer = _client(protocol, url)
        try:
            for _ in range(warmup):
                infer(numeric)
            barrier.wait()
            mine = samples[index]
            for _ in range(per_caller):
                start = time.perf_counter()
                out = infer(numeric)
                mine.append((time.perf_counter() - start) * 1e3)
                if out.shape != (rows,):
                    raise RuntimeError(f"probability has shape {out.shape}, expected ({rows},)")
        except Exception as exc:  # reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            client.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        return {"error": errors[0]}
    return {"latencies_ms": [round(v, 4) for s in samples for v in s], "wall_s": wall}


def drive() -> None:
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command.pop("op") == "predict":
                _, infer = _client(command["protocol"], command["url"])
                result: dict[str, Any] = {"probability": infer(_rows(command["rows"])).tolist()}
            else:
                result = _measure(**command)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# -- the benchmark ----------------------------------------------------------------------------------


@contextlib.contextmanager
def servers_stopped(servers: list[Server]) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            stop(server)


@dataclass
class Measured:
    runs: dict[tuple[str, Case], list[dict[str, float]]] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def champion_registry(ctx: Context, scratch: Path) -> AsyncIterator[tuple[Any, bytes]]:
    """A registry in this process holding the bench model, registered and promoted to champion; yields
    (the running RegistryApp, the model's TorchScript bytes for MLServer)."""
    from flywheel.common import rpc
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.inference.testing import build_predictive_artifact
    from flywheel.predictive.artifact import read_artifact
    from flywheel.proto.events.v1 import common_pb2
    from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
    from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc
    from flywheel.registry.config import RegistrySettings
    from flywheel.registry.main import RegistryApp

    artifact = build_predictive_artifact(n_numeric=N_NUMERIC, name=MODEL)
    model_pt = read_artifact(artifact).model_pt
    assert model_pt is not None
    registry_settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_inference_registry_{ctx.run_id}",
        consumer_group=f"bench-inference-registry-{ctx.run_id}",
        artifact_store=(scratch / "artifacts").as_uri())
    registry_app = RegistryApp(registry_settings)
    try:
        await registry_app.start()
        versions = RegistryClient(registry_app.address, timeout=30.0, auth=ctx.infra.auth())
        version = await versions.register(rpb.ModelVersionSpec(
            model_name=MODEL, kind=common_pb2.MODEL_KIND_PREDICTIVE, framework="pytorch"), artifact)
        async with rpc.channel(registry_app.address, default_timeout=30.0, auth=ctx.infra.auth()) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            await registry.SetAlias(rpb.SetAliasRequest(model_name=MODEL, alias="champion", version=version.version))
        yield registry_app, model_pt
    finally:
        await registry_app.stop()
        await drop_schemas(ctx.infra.database_url, [registry_settings.db_schema])


def chosen_peers() -> list[Peer]:
    """PEERS, or those named in BENCH_INFERENCE_PEERS (comma-separated keys; for quick looks, not results)."""
    wanted = [k for k in os.environ.get("BENCH_INFERENCE_PEERS", "").split(",") if k]
    return [p for p in PEERS if not wanted or p.key in wanted]


async def probe_mlserver(ctx: Context, driver: Driver, model_pt: bytes, scratch: Path, plan: list[Case],
                         warmup: int) -> list[dict[str, Any]]:
    """MLServer with each of MLSERVER_PROBES on the 8-caller cases of `plan`, one at a time, one run each."""
    probed = []
    for label, settings, model_settings in MLSERVER_PROBES:
        peer = Peer(f"mlserver_probe{len(probed)}", label, "mlserver", settings=tuple(settings.items()),
                    model_settings=tuple(model_settings.items()))
        LABELS[peer.key] = f"MLServer 1.7.1 {label}"
        server = start_mlserver(peer, model_pt, scratch)
        try:
            with ctx.steps.step(f"MLServer probe: {label}"):
                await wait_ready(server)
                row: dict[str, Any] = {"setting": label}
                for case in (c for c in plan if c.callers == CONCURRENCY and c.rows == 1):
                    await asyncio.to_thread(driver.call, op="measure", protocol=case.protocol,
                                            url=url(server, case.protocol), rows=1, callers=4,
                                            requests=4 * warmup, warmup=0)
                    result = await asyncio.to_thread(
                        driver.call, op="measure", protocol=case.protocol, url=url(server, case.protocol),
                        rows=1, callers=case.callers, requests=case.requests, warmup=max(1, warmup // 10))
                    latencies = result["latencies_ms"]
                    row[case.tag] = {"req_per_s": rounded(len(latencies) / result["wall_s"]),
                                     "p99_ms": rounded(percentile(latencies, 99))}
                probed.append(row)
                ctx.steps.log(f"{label}: " + ", ".join(f"{k} {v['req_per_s']:,.0f} req/s" for k, v in row.items()
                                                      if isinstance(v, dict)))
        except RuntimeError as exc:  # a setting that does not run here is a finding too
            probed.append({"setting": label, "error": str(exc).splitlines()[0]})
        finally:
            stop(server)
    return probed


def chosen_cases(quick: bool) -> list[Case]:
    """cases(), or those whose tag contains one of BENCH_INFERENCE_CASES (comma-separated, e.g. grpc_8callers)."""
    wanted = [k for k in os.environ.get("BENCH_INFERENCE_CASES", "").split(",") if k]
    return [c for c in cases(quick) if not wanted or any(w in c.tag for w in wanted)]


async def run(ctx: Context) -> BenchResult:
    steps, reps = ctx.steps, 1 if ctx.quick else REPEATS
    plan, peers = chosen_cases(ctx.quick), chosen_peers()
    warmup = 50 if ctx.quick else 200
    steps.begin(NAME, 5 + reps * len(plan))
    with steps.step("MLServer venv (bench/mlserver_runtime/.venv: mlserver 1.7.1 + torch 2.13.0 CPU)"):
        venv = await asyncio.to_thread(ensure_mlserver_venv)
    scratch = ctx.infra.home / "inference"
    scratch.mkdir(exist_ok=True)
    servers: list[Server] = []
    schemas = [f"bench_{p.key}_{ctx.run_id}" for p in peers if p.kind == "flywheel"]
    try:
        async with champion_registry(ctx, scratch) as (registry_app, model_pt):
            with servers_stopped(servers):
                with steps.step(f"start {', '.join(p.label for p in peers)}; wait until they serve"):
                    for peer in peers:
                        servers.append(start_peer(ctx, peer, registry_app.address, model_pt, scratch))
                    ready_s = dict(zip([s.key for s in servers], await asyncio.gather(*map(wait_ready, servers)),
                                       strict=True))
                by_key = {s.key: s for s in servers}
                driver = Driver()
                try:
                    agreement = await check_same_model(steps, driver, [s for s in servers if s.key != NOOP])
                    idle_mib: dict[str, float] = {}
                    with MemorySampler({s.key: s.process.pid for s in servers}) as sampler:
                        for s in servers:
                            idle_mib[s.key] = sampler.rss_mib(s.key)
                        with steps.step(f"warm-up: {4 * warmup} requests (4 callers) per server and protocol"):
                            for s in servers:
                                for protocol in ("grpc", "rest"):
                                    await asyncio.to_thread(driver.call, op="measure", protocol=protocol,
                                                            url=url(s, protocol), rows=1, callers=4,
                                                            requests=4 * warmup, warmup=0)
                        measured = await measure_all(ctx, driver, servers, sampler, plan, reps, warmup)
                    peak_mib = dict(sampler.peak_mib)
                    probes = await probe_mlserver(ctx, driver, model_pt, scratch, plan, warmup) if (
                        MLSERVER in by_key and not os.environ.get("BENCH_INFERENCE_PEERS")) else []
                    logged = scrape(by_key[FLYWHEEL_ON], ("flywheel_events_published_total",
                                                          "flywheel_events_dropped_total",
                                                          "flywheel_inference_requests_total")
                                    ) if FLYWHEEL_ON in by_key else {}
                finally:
                    driver.close()
    finally:
        await drop_schemas(ctx.infra.database_url, schemas)
    return report(measured, plan, peers, reps=reps, warmup=warmup, peak_mib=peak_mib, idle_mib=idle_mib,
                  ready_s=ready_s, logged=logged, agreement=agreement, venv=venv, samples=sampler.samples,
                  probes=probes)


def url(server: Server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


async def check_same_model(steps: Any, driver: Driver, servers: list[Server]) -> float:
    """Largest difference between the servers' probabilities for the same 8 rows (both protocols)."""
    with steps.step("check: every server and protocol returns the same probabilities for the same rows"):
        answers = [await asyncio.to_thread(driver.call, op="predict", protocol=protocol, url=url(s, protocol),
                                           rows=8) for s in servers for protocol in ("grpc", "rest")]
        reference = answers[0]["probability"]
        worst = max(abs(a - b) for answer in answers for a, b in zip(answer["probability"], reference, strict=True))
        if worst > 1e-5:
            raise RuntimeError(f"the servers disagree on the same rows (max difference {worst})")
    return worst


async def measure_all(ctx: Context, driver: Driver, servers: list[Server], sampler: MemorySampler, plan: list[Case],
                      reps: int, warmup: int) -> Measured:
    measured = Measured()
    for rep in range(1, reps + 1):
        for case in plan:
            with ctx.steps.step(f"{case.label}: {case.requests:,} requests x {len(servers)} servers, "
                                f"run {rep}/{reps}"):
                # Rotate who goes first, so no server always follows the same neighbour.
                order = servers[rep % len(servers):] + servers[:rep % len(servers)]
                for s in order:
                    cpu_before = sampler.cpu_s(s.key)
                    result = await asyncio.to_thread(
                        driver.call, op="measure", protocol=case.protocol, url=url(s, case.protocol), rows=case.rows,
                        callers=case.callers, requests=case.requests, warmup=max(1, warmup // 10))
                    cpu = sampler.cpu_s(s.key) - cpu_before
                    latencies = result["latencies_ms"]
                    measured.runs.setdefault((s.key, case), []).append({
                        "req_per_s": len(latencies) / result["wall_s"], "p50_ms": percentile(latencies, 50),
                        "p99_ms": percentile(latencies, 99), "server_cpu_ms_per_req": cpu * 1e3 / len(latencies)})
                line = ", ".join(f"{LABELS[k]} {thousands(r[-1]['req_per_s'])} req/s p99 "
                                 f"{significant(r[-1]['p99_ms'])} ms"
                                 for (k, c), r in measured.runs.items() if c == case)
                ctx.steps.log(line)
    return measured


def targets_of(table: dict[tuple[str, Case], dict[str, Any]], case: Case, against: str) -> dict[str, Any]:
    """Flywheel (logging on) against the targets, with MLServer peer `against` as the reference:
    throughput >= 2x its (or >= 0.9x the no-op ceiling where the ceiling is below 2x it), p99 <= its,
    logging cost < 10%."""
    fw, off, ml = table[FLYWHEEL_ON, case], table.get((FLYWHEEL_OFF, case)), table[against, case]
    ceiling = table.get((NOOP, case))
    wanted = 2 * ml["req_per_s"]
    basis = "2x MLServer"
    if ceiling is not None and ceiling["req_per_s"] < wanted:
        wanted, basis = 0.9 * ceiling["req_per_s"], "0.9x ceiling"
    cost = 100 * (1 - fw["req_per_s"] / off["req_per_s"]) if off else math.nan
    return {"wanted_req_per_s": wanted, "basis": basis, "throughput_ok": fw["req_per_s"] >= wanted,
            "p99_ok": fw["p99_ms"] <= ml["p99_ms"], "logging_cost_pct": cost, "logging_ok": cost < 10}


def report(measured: Measured, plan: list[Case], peers: list[Peer], *, reps: int, warmup: int,
           peak_mib: dict[str, float], idle_mib: dict[str, float], ready_s: dict[str, float],
           logged: dict[str, float], agreement: float, venv: str, samples: int,
           probes: list[dict[str, Any]]) -> BenchResult:
    results: list[dict[str, Any]] = []
    table: dict[tuple[str, Case], dict[str, Any]] = {}
    for (key, case), runs in measured.runs.items():
        row = {"server": key, "protocol": case.protocol, "callers": case.callers, "rows": case.rows,
               "requests": case.requests,
               **{m: rounded(median([r[m] for r in runs])) for m in ("req_per_s", "p50_ms", "p99_ms",
                                                                     "server_cpu_ms_per_req")},
               "runs": [{m: rounded(v) for m, v in r.items()} for r in runs]}
        table[key, case] = row
        results.append(row)
    keys = [p.key for p in peers]
    ratios: dict[str, float] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    for case in plan:
        ml, tag = table.get((MLSERVER, case)), case.tag
        for key in keys:
            r = table[key, case]
            if ml is not None and key != MLSERVER:
                ratios[f"throughput_{key}/mlserver_{tag}"] = ratio(r["req_per_s"], ml["req_per_s"])
                ratios[f"p99_{key}/mlserver_{tag}"] = ratio(r["p99_ms"], ml["p99_ms"])
            if (MLSERVER_BEST, case) in table and key not in (MLSERVER, MLSERVER_BEST):
                ratios[f"throughput_{key}/mlserver_best_{tag}"] = ratio(r["req_per_s"],
                                                                        table[MLSERVER_BEST, case]["req_per_s"])
            if (NOOP, case) in table and key != NOOP:
                ratios[f"throughput_{key}/ceiling_{tag}"] = ratio(r["req_per_s"], table[NOOP, case]["req_per_s"])
        if (FLYWHEEL_ON, case) in table and (FLYWHEEL_OFF, case) in table:
            ratios[f"logging_cost_pct_{tag}"] = round(
                100 * (1 - table[FLYWHEEL_ON, case]["req_per_s"] / table[FLYWHEEL_OFF, case]["req_per_s"]), 1)
        if (FLYWHEEL_ON, case) in table and ml is not None:
            verdicts[tag] = {"vs_mlserver": targets_of(table, case, MLSERVER)}
            if (MLSERVER_BEST, case) in table:
                verdicts[tag]["vs_mlserver_best"] = targets_of(table, case, MLSERVER_BEST)
    if FLYWHEEL_ON in peak_mib and MLSERVER in peak_mib:
        ratios["peak_rss_flywheel/mlserver"] = ratio(peak_mib[FLYWHEEL_ON], peak_mib[MLSERVER])

    def versus(key: str, case: Case) -> list[str]:
        r, ml = table[key, case], table.get((MLSERVER, case))
        best, ceiling = table.get((MLSERVER_BEST, case)), table.get((NOOP, case))
        return [f"{r['req_per_s'] / ml['req_per_s']:.2f}x / {r['p99_ms'] / ml['p99_ms']:.2f}" if ml else "",
                f"{r['req_per_s'] / best['req_per_s']:.2f}x" if best else "",
                f"{r['req_per_s'] / ceiling['req_per_s']:.2f}" if ceiling else ""]

    main_table = markdown_table(
        ["case", "server", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "throughput / p99 vs MLServer",
         "throughput vs MLServer batching", "of ceiling"],
        [[case.label, LABELS[key], thousands(table[key, case]["req_per_s"]), significant(table[key, case]["p50_ms"]),
          significant(table[key, case]["p99_ms"]), significant(table[key, case]["server_cpu_ms_per_req"]),
          *versus(key, case)] for case in plan for key in keys],
        right=range(2, 9))

    def mark(ok: bool) -> str:
        return "pass" if ok else "**miss**"

    refs = ["vs_mlserver", *(["vs_mlserver_best"] if MLSERVER_BEST in keys else [])]
    target_rows, passed = [], dict.fromkeys(refs, 0)
    for case in plan:
        v = verdicts.get(case.tag)
        if v is None:
            continue
        fw = table[FLYWHEEL_ON, case]
        cells = [case.label, thousands(fw["req_per_s"])]
        for ref in refs:
            t = v[ref]
            ok = t["throughput_ok"] and t["p99_ok"] and t["logging_ok"]
            passed[ref] += ok
            cells += [f">= {thousands(t['wanted_req_per_s'])} ({t['basis']}): {mark(t['throughput_ok'])}",
                      f"{mark(t['p99_ok'])}"]
        t = v["vs_mlserver"]
        cells.append(f"{t['logging_cost_pct']:.1f}%: {mark(t['logging_ok'])}")
        target_rows.append(cells)
    target_table = markdown_table(
        ["case", "Flywheel (logging on) req/s", "throughput target", "p99 <= MLServer's",
         *(["throughput target vs MLServer batching", "p99 <= MLServer batching's"] if MLSERVER_BEST in keys else []),
         "logging cost < 10%"],
        target_rows, right=(1,))
    batching_table = markdown_table(
        ["case", "batching off req/s", "batching on req/s", "on / off", "p99 ms off", "p99 ms on"],
        [[c.label, thousands(table[FLYWHEEL_ON, c]["req_per_s"]), thousands(table[FLYWHEEL_BATCHING, c]["req_per_s"]),
          f"{table[FLYWHEEL_BATCHING, c]['req_per_s'] / table[FLYWHEEL_ON, c]['req_per_s']:.2f}x",
          significant(table[FLYWHEEL_ON, c]["p99_ms"]), significant(table[FLYWHEEL_BATCHING, c]["p99_ms"])]
         for c in plan], right=range(1, 6)) if FLYWHEEL_BATCHING in keys and FLYWHEEL_ON in keys else ""
    probe_cases = [c for c in plan if c.callers == CONCURRENCY and c.rows == 1 and (MLSERVER, c) in table]
    probe_table = markdown_table(
        ["MLServer 1.7.1 setting", *(f"{c.label}: req/s (p99 ms)" for c in probe_cases)],
        [[f"{LABELS[k]} (the row above; median of the runs)",
          *(f"{thousands(table[k, c]['req_per_s'])} ({significant(table[k, c]['p99_ms'])})" for c in probe_cases)]
         for k in (MLSERVER, MLSERVER_BEST) if k in keys]
        + [[p["setting"], *((f"{thousands(p[c.tag]['req_per_s'])} ({significant(p[c.tag]['p99_ms'])})"
                             if c.tag in p else p.get("error", "")) for c in probe_cases)] for p in probes],
        right=range(1, 1 + len(probe_cases))) if probes and probe_cases else ""
    memory_table = markdown_table(
        ["server", "RSS ready (MiB)", "peak RSS under load (MiB)", "ready after (s)"],
        [[LABELS[k], f"{idle_mib[k]:.0f}", f"{peak_mib[k]:.0f}", f"{ready_s[k]:.1f}"] for k in keys],
        right=range(1, 4))
    requests_logged = sum(v for k, v in logged.items() if k.startswith("flywheel_inference_requests_total"))
    published = sum(v for k, v in logged.items()
                    if k.startswith("flywheel_events_published_total") and "predictions.logged" in k)
    dropped = sum(v for k, v in logged.items()
                  if k.startswith("flywheel_events_dropped_total") and "predictions.logged" in k)
    n = len(target_rows)
    summary = (
        f"Targets (every case, logging on): throughput >= 2x MLServer's (or >= 0.9x the no-op ceiling where the "
        f"ceiling is below 2x MLServer), p99 <= MLServer's, logging cost < 10%. All three met in "
        f"{passed['vs_mlserver']} of {n} cases against MLServer with parallel_workers 0 (as first compared)"
        + (f" and in {passed['vs_mlserver_best']} of {n} against MLServer with adaptive batching "
           f"({_describe({**MLSERVER_BEST_SETTINGS, **MLSERVER_BEST_MODEL})}); parallel_workers 1 and 2: probe table"
           if "vs_mlserver_best" in passed else "") + ". The logging-on server answered "
        f"{requests_logged:,.0f} requests and published {published:,.0f} predictions.logged events "
        f"({dropped:,.0f} dropped).")
    notes = (
        f"Same TorchScript MLP ({N_NUMERIC} numeric inputs, hidden 64-32, flywheel.inference.testing."
        "build_predictive_artifact) in Flywheel and MLServer; the probabilities of 8 rows agree within "
        f"{agreement:.1e} across servers and protocols. Flywheel: `python -m flywheel.inference` subprocesses with "
        f"{_describe(FLYWHEEL_SETTINGS)} (a supervisor and that many serving processes sharing the ports with "
        "SO_REUSEPORT, each with its own model copy, consumer and prediction logger; gRPC + REST on one event loop "
        "per process, the tiny model scored on the loop), model from an in-process registry (registered, promoted "
        "to champion); logging on = sample rate 1.0 to predictions.logged on the run's broker (fire-and-forget "
        "BoundedPublisher, batched produce), off = sample rate 0; batching = "
        f"{_describe(BATCHING_SETTINGS)}. MLServer 1.7.1 in its own venv (mlserver_runtime/.venv, {venv}): "
        "parallel_workers 0 (inference on the main process' event loop, as first compared) and with adaptive "
        f"batching ({_describe({**MLSERVER_BEST_SETTINGS, **MLSERVER_BEST_MODEL})}); "
        f"{'; '.join(label for label, _, _ in MLSERVER_PROBES)} were tried on the 8-caller cases after "
        "the main measurement (probe table); debug off, metrics on a free "
        "port; custom runtime bench/mlserver_runtime/bench_torchscript.py: torch.jit.load + the same forward under "
        "inference_mode with one torch thread (as Flywheel's torch_threads default). No-op: bench/noop_server.py "
        "(grpc.aio canned ModelInfer answer + uvicorn/httptools bare "
        "ASGI canned REST answer, one process): the ceiling of this load on this machine; with the model "
        "(floor row): the same server answering through the TorchScript forward (one torch thread, "
        "inference_mode) and nothing else. Load: tritonclient 2.x "
        "(grpc + http) in one driver subprocess, one client per thread; input 'numeric' FP32 [rows, 30], output "
        "'probability' only; REST uses JSON tensors both ways (MLServer does not accept the binary extension), "
        f"gRPC raw_input_contents. Warm-up {4 * warmup} requests (4 callers) per server and protocol, then "
        f"{warmup // 10 or 1} per caller before each measurement; "
        f"{'1 run' if reps == 1 else f'median of {reps} interleaved runs'} per case (all in `runs`). req/s = "
        "requests / wall time of the measurement; p50/p99 over per-request perf_counter latencies at the client. "
        "Server CPU ms/req: user+system CPU of the server process tree during the measurement / requests. Peak "
        f"RSS: psutil, process + children, sampled every {SAMPLE_EVERY_S * 1e3:.0f} ms over the whole load "
        f"({samples:,} samples). Every peer, the driver, the broker and the database share the machine's 2 cores "
        "(and other work on it: see the load average): the client's own CPU bounds the concurrent cases, which "
        "is what the no-op ceiling shows. " + summary)
    return BenchResult(
        name=NAME, title="inference: Flywheel vs MLServer 1.7.1 vs a no-op OIP server (ceiling), same TorchScript "
                         "MLP, same tritonclient load",
        results=results, ratios=ratios, notes=notes,
        tables=[t for t in (main_table, target_table, summary, batching_table, probe_table, memory_table) if t],
        extra={"peak_rss_mib": {k: rounded(v) for k, v in peak_mib.items()},
               "ready_rss_mib": {k: rounded(v) for k, v in idle_mib.items()},
               "ready_after_s": {k: rounded(v) for k, v in ready_s.items()},
               "targets": verdicts, "peers": {p.key: p.label for p in peers}, "mlserver_probes": probes,
               "prediction_log": {"requests": requests_logged, "published": published, "dropped": dropped},
               "max_probability_difference": agreement, "warmup_requests": warmup, "repeats": reps},
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["drive"]:
        drive()
    else:
        raise SystemExit("usage: python -m bench.inference drive (the load driver of `python -m bench`)")
