"""Benchmark `registry`: artifacts through the registry's gRPC API vs copying them on the same disk,
and GetModelVersion latency vs a grpc.health.v1 Check on the same server.

The registry runs in this process (RegistryApp, as the integration tests start it) with a local
artifact store in the run's scratch directory, so the registry and the baseline write to the same
disk. Client and server share one event loop: the latency floor (health Check) pays the same
client and transport costs, so the ratio isolates what GetModelVersion adds on the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import (
    REPEATS,
    BenchResult,
    Context,
    MiB,
    drop_schemas,
    markdown_table,
    median,
    percentile,
    ratio,
    rounded,
    significant,
    thousands,
)
from flywheel.common import rpc
from flywheel.common.clients.registry import upload_requests
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry.config import RegistrySettings
from flywheel.registry.main import SERVICE_NAME, RegistryApp

NAME = "registry"
CHUNK = MiB
CONCURRENCY = 8
WARMUP_CALLS = 200
CALL_TIMEOUT = 10.0
STREAM_TIMEOUT = 600.0
# One random MiB; every chunk is this block behind a header naming its artifact and index, so no
# two artifacts share content (the store is content-addressed) and nothing big sits in memory.
_BLOCK = os.urandom(CHUNK)


@dataclass(frozen=True)
class Artifact:
    """`size_mib` MiB of bytes unique to `tag`, produced one 1 MiB chunk at a time."""

    tag: str
    size_mib: int

    def chunks(self) -> Iterator[bytes]:
        for i in range(self.size_mib):
            header = f"{self.tag}:{i}:".encode().ljust(64, b".")
            yield header + _BLOCK[len(header):]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the baseline: the same bytes copied and hashed on the same disk ----------------------------


def settle() -> None:
    """Flush dirty pages so a measurement does not pay for the write-back of the one before."""
    os.sync()


def write_source(artifact: Artifact, path: Path) -> None:
    with path.open("wb") as f:
        for chunk in artifact.chunks():
            f.write(chunk)


@dataclass(frozen=True)
class CopyTiming:
    """Seconds of one baseline run, by part."""

    copy: float
    fsync: float
    sha256: float

    @property
    def total(self) -> float:
        return self.copy + self.fsync + self.sha256


def copy_and_hash(source: Path, target: Path, *, fsync: bool) -> tuple[CopyTiming, str]:
    """shutil.copyfile `source` to `target` (+ fsync), then sha256 the copy; (timing, sha256)."""
    start = time.perf_counter()
    shutil.copyfile(source, target)
    copied = time.perf_counter()
    if fsync:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    synced = time.perf_counter()
    with target.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return CopyTiming(copied - start, synced - copied, time.perf_counter() - synced), digest


def baseline(artifact: Artifact, directory: Path) -> tuple[CopyTiming, CopyTiming, str]:
    """(copy + sha256, copy + fsync + sha256, sha256) of the artifact's bytes, copied on `directory`'s disk."""
    source, target = directory / "baseline-source.bin", directory / "baseline-copy.bin"
    write_source(artifact, source)
    try:
        settle()
        plain, digest = copy_and_hash(source, target, fsync=False)
        target.unlink()
        settle()
        durable, again = copy_and_hash(source, target, fsync=True)
        if again != digest:
            raise RuntimeError("the two baseline copies differ")
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
    return plain, durable, digest


# -- the registry ---------------------------------------------------------------------------------


def spec(name: str) -> pb.ModelVersionSpec:
    """A version spec with the metadata a real one carries (metrics, tags, lineage)."""
    lineage = common_pb2.Lineage(training_run_id="run-42", dataset_snapshot_id="snapshot-2024-06-01",
                                 feature_names=[f"feature_{i}" for i in range(12)])
    return pb.ModelVersionSpec(model_name=name, kind=common_pb2.MODEL_KIND_PREDICTIVE, framework="pytorch",
                               filename="model.safetensors", metrics={"roc_auc": 0.912, "pr_auc": 0.634},
                               tags={"team": "risk", "bench": "true"}, lineage=lineage)


async def register(stub: pb_grpc.RegistryServiceStub, name: str, artifact: Artifact) -> tuple[float, pb.ModelVersion]:
    """(seconds, version) to stream the artifact in 1 MiB chunks through RegisterModelVersion."""
    start = time.perf_counter()
    response = await stub.RegisterModelVersion(upload_requests(spec(name), artifact.chunks()), timeout=STREAM_TIMEOUT)
    return time.perf_counter() - start, response.model_version


async def download(stub: pb_grpc.RegistryServiceStub, name: str, version: int) -> tuple[float, int]:
    """(seconds, bytes received) to stream a version's artifact through DownloadArtifact."""
    request = pb.DownloadArtifactRequest(ref=pb.ModelVersionRef(model_name=name, version=version))
    received = 0
    start = time.perf_counter()
    async for message in stub.DownloadArtifact(request, timeout=STREAM_TIMEOUT):
        received += len(message.chunk)
    return time.perf_counter() - start, received


async def latencies(call: Callable[[], Awaitable[Any]], calls: int, callers: int) -> tuple[list[float], float]:
    """(per-call seconds, wall seconds) for `calls` calls made by `callers` concurrent loops."""
    samples: list[float] = []

    async def caller(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    return samples, time.perf_counter() - start


# -- the benchmark -----------------------------------------------------------------------------


async def transfer_cases(ctx: Context, stub: pb_grpc.RegistryServiceStub, sizes: Sequence[int]) -> tuple[
        list[dict[str, Any]], int]:
    """Per size: register, download and the two baselines, alternating, a warm-up + REPEATS times; (rows, versions)."""
    steps, scratch = ctx.steps, ctx.infra.home / "baseline"
    scratch.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    registered = 0
    for size in sizes:
        name = f"bench-{size}mib-{ctx.run_id}"
        runs: dict[str, list[float]] = {}
        for rep in range(REPEATS + 1):
            artifact = Artifact(f"{ctx.run_id}-{size}-{rep}", size)
            run = f"run {rep}/{REPEATS}" if rep else "warm-up"
            with steps.step(f"{size} MiB: copy + sha256 baseline, register, download, {run}"):
                plain, durable, digest = baseline(artifact, scratch)
                settle()
                upload_s, mv = await register(stub, name, artifact)
                download_s, received = await download(stub, name, mv.version)
            registered += 1
            if mv.artifact.sha256 != digest or mv.artifact.size_bytes != size * MiB or received != size * MiB:
                raise RuntimeError(f"{size} MiB: the registry stored or returned other bytes than the baseline")
            if not rep:
                continue  # the first transfer of a size also pays for page-cache growth and allocation
            for key, seconds in (("register", upload_s), ("download", download_s), ("copy_sha256", plain.total),
                                 ("copy_fsync_sha256", durable.total), ("copyfile", plain.copy),
                                 ("fsync", durable.fsync), ("sha256", plain.sha256)):
                runs.setdefault(key, []).append(seconds)
        row: dict[str, Any] = {"size_mib": size, "peak_rss_mib": rounded(peak_rss_mib())}
        for key, values in runs.items():
            row[f"{key}_runs_s"] = [rounded(v, 4) for v in values]
            if key != "fsync":  # the parts of the baselines, for context: copyfile alone, sha256 alone
                row[f"{key}_mib_per_s"] = rounded(size / median(values))
        rows.append(row)
        steps.log(f"{size} MiB: register {significant(row['register_mib_per_s'])} MiB/s, download "
                  f"{significant(row['download_mib_per_s'])} MiB/s, copy+sha256 "
                  f"{significant(row['copy_sha256_mib_per_s'])} MiB/s")
    return rows, registered


async def latency_cases(ctx: Context, channel: grpc.aio.Channel, ref: pb.ModelVersionRef,
                        calls: int) -> list[dict[str, Any]]:
    """GetModelVersion and health Check, 1 and CONCURRENCY callers, interleaved, REPEATS times."""
    stub = pb_grpc.RegistryServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    get_request = pb.GetModelVersionRequest(ref=ref)
    check_request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    targets: dict[str, Callable[[], Awaitable[Any]]] = {
        "GetModelVersion": lambda: stub.GetModelVersion(get_request, timeout=CALL_TIMEOUT),
        "health Check": lambda: health.Check(check_request, timeout=CALL_TIMEOUT),
    }
    for call in targets.values():
        await latencies(call, WARMUP_CALLS, 1)
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for rep in range(1, REPEATS + 1):
        with ctx.steps.step(f"latency: {calls:,} calls x (GetModelVersion, health) x (1, {CONCURRENCY} callers), "
                            f"run {rep}/{REPEATS}"):
            for callers in (1, CONCURRENCY):
                for label, call in targets.items():
                    samples, wall = await latencies(call, calls, callers)
                    runs.setdefault((label, callers), []).append(
                        (percentile(samples, 50), percentile(samples, 99), len(samples) / wall))
    rows = []
    for (label, callers), measured in runs.items():
        rows.append({"call": label, "callers": callers, "calls": calls,
                     "p50_ms": rounded(median([m[0] for m in measured]) * 1e3),
                     "p99_ms": rounded(median([m[1] for m in measured]) * 1e3),
                     "calls_per_s": rounded(median([m[2] for m in measured])),
                     "runs": [{"p50_ms": rounded(m[0] * 1e3), "p99_ms": rounded(m[1] * 1e3),
                               "calls_per_s": rounded(m[2])} for m in measured]})
    return rows


async def count_versions(stub: pb_grpc.RegistryServiceStub) -> int:
    response = await stub.ListModels(pb.ListModelsRequest(page_size=1000), timeout=CALL_TIMEOUT)
    return sum(m.latest_version for m in response.models)


async def run(ctx: Context) -> BenchResult:
    sizes = (1, 32) if ctx.quick else (1, 32, 256)
    calls = 500 if ctx.quick else 2_000
    ctx.steps.begin(NAME, 1 + (REPEATS + 1) * len(sizes) + REPEATS)
    rss_before = peak_rss_mib()
    settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_registry_{ctx.run_id}",
        consumer_group=f"bench-registry-{ctx.run_id}", artifact_store=(ctx.infra.home / "artifacts").as_uri(),
        max_artifact_bytes=2 * max(sizes) * MiB,
    )
    app = RegistryApp(settings)
    try:
        with ctx.steps.step("start the registry in-process (database, relay, consumer group, gRPC)"):
            await app.start()
        async with rpc.channel(app.address, default_timeout=CALL_TIMEOUT, auth=ctx.infra.auth()) as channel:
            stub = pb_grpc.RegistryServiceStub(channel)
            transfers, registered = await transfer_cases(ctx, stub, sizes)
            ref = pb.ModelVersionRef(model_name=f"bench-1mib-{ctx.run_id}", version=1)
            latency = await latency_cases(ctx, channel, ref, calls)
            versions = await count_versions(stub)
        if versions != registered:
            raise RuntimeError(f"the registry lists {versions} versions, {registered} were registered")
    finally:
        await app.stop()
        await drop_schemas(ctx.infra.database_url, [settings.db_schema])
        shutil.rmtree(ctx.infra.home / "artifacts", ignore_errors=True)
    return report(transfers, latency, versions=versions, calls=calls, rss_before=rss_before)


def report(transfers: list[dict[str, Any]], latency: list[dict[str, Any]], *, versions: int, calls: int,
           rss_before: float) -> BenchResult:
    ratios: dict[str, float] = {}
    for t in transfers:
        size = t["size_mib"]
        for what in ("register", "download"):
            ratios[f"{what}_{size}MiB/copy_sha256"] = ratio(t[f"{what}_mib_per_s"], t["copy_sha256_mib_per_s"])
            ratios[f"{what}_{size}MiB/copy_fsync_sha256"] = ratio(t[f"{what}_mib_per_s"],
                                                                  t["copy_fsync_sha256_mib_per_s"])
    floor = {r["callers"]: r for r in latency if r["call"] == "health Check"}
    for r in latency:
        if r["call"] == "GetModelVersion":
            base = floor[r["callers"]]
            ratios[f"get_model_version_p50/health_p50_{r['callers']}_callers"] = ratio(r["p50_ms"], base["p50_ms"])
            ratios[f"get_model_version_p99/health_p99_{r['callers']}_callers"] = ratio(r["p99_ms"], base["p99_ms"])
            ratios[f"get_model_version_calls_per_s/health_{r['callers']}_callers"] = ratio(
                r["calls_per_s"], base["calls_per_s"])
    peak = max(t["peak_rss_mib"] for t in transfers)

    transfer_table = markdown_table(
        ["size", "register MiB/s", "download MiB/s", "copy+sha256 MiB/s", "copy+fsync+sha256 MiB/s",
         "register / copy", "download / copy", "register / copy+fsync"],
        [[f"{t['size_mib']} MiB", *(significant(t[f"{what}_mib_per_s"]) for what in (
              "register", "download", "copy_sha256", "copy_fsync_sha256")),
          *(f"{ratios[key.format(size=t['size_mib'])]:.2f}" for key in (
              "register_{size}MiB/copy_sha256", "download_{size}MiB/copy_sha256",
              "register_{size}MiB/copy_fsync_sha256"))] for t in transfers],
        right=range(1, 8))
    latency_table = markdown_table(
        ["call", "callers", "p50 ms", "p99 ms", "calls/s", "p50 / health", "p99 / health"],
        [[r["call"], r["callers"], significant(r["p50_ms"]), significant(r["p99_ms"]), thousands(r["calls_per_s"]),
          f"{r['p50_ms'] / floor[r['callers']]['p50_ms']:.2f}", f"{r['p99_ms'] / floor[r['callers']]['p99_ms']:.2f}"]
         for r in sorted(latency, key=lambda r: (r["callers"], r["call"] != "GetModelVersion"))],
        right=range(1, 7))
    summary = (f"Peak RSS of the benchmark process (client + in-process registry): {peak:.0f} MiB, "
               f"+{peak - rss_before:.0f} MiB over the {rss_before:.0f} MiB it had before this benchmark; "
               f"{versions} versions registered.")
    notes = (
        "Register streams 1 MiB RegisterModelVersion chunks; the registry hashes them, spools them to a temp file, "
        "fsyncs it, moves it into the content-addressed store and commits the version + its outbox event. "
        "Download streams DownloadArtifact (1 MiB messages) from the page cache and hashes nothing, so it can "
        "beat the copy+sha256 baseline on large files. Baselines on the same disk: shutil.copyfile of the same "
        "bytes then hashlib.sha256 of the copy, and the same with an fsync (the registry's durability). "
        f"os.sync() runs before each timed transfer. Median of {REPEATS} runs after a warm-up run per size; every "
        f"run uses new bytes (no dedup). Latency: {calls:,} calls per run ({CONCURRENCY} callers split them), "
        "same channel (flywheel.common.rpc.channel: deadline + tracing interceptors), median of "
        f"{REPEATS} runs of p50/p99, after {WARMUP_CALLS} warm-up calls. The registry runs in-process: client "
        "and server share one event loop and the GIL. " + summary
    )
    return BenchResult(
        name=NAME, title="registry: artifacts over gRPC vs copy + sha256 on the same disk; GetModelVersion vs health",
        results=[{"kind": "transfer", **t} for t in transfers] + [{"kind": "latency", **r} for r in latency],
        ratios=ratios, notes=notes,
        tables=[transfer_table, latency_table, summary],
        extra={"peak_rss_mib": rounded(peak), "rss_before_mib": rounded(rss_before),
               "peak_rss_growth_mib": rounded(peak - rss_before), "registered_versions": versions},
    )
