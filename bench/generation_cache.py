"""The response cache rows of benchmark `generation` (bench/generation.py runs this after the engine rows):
inference serving SmolLM2-135M-Instruct with its response cache on (default settings), the embedder serving the
real all-MiniLM-L6-v2 for the semantic cache, both their own processes as `make run` starts them, the registry
in this process; every request goes through `POST /v1/chat/completions` (httpx, one kept-alive connection, a
bearer token).

- latency: a miss (generated, 32 new tokens at most), an exact hit (the same request again), a semantic hit (a
  paraphrase of a cached question) and an exact hit streamed (to `data: [DONE]`), p50 / p99, sequential calls;
- hit rate on the shipped question set (bench/data/cache_paraphrases.yaml): the 42 demo bank questions are
  asked (misses, stored), then their paraphrases: a hit counts when the answer replayed is its own question's;
  then 22 near-misses (worded like one question, wanting another answer) that must not hit, then the 42
  questions typed casually (lower case, no final punctuation);
- isolation: each of the 42 questions asked again word for word under another system prompt and under another
  tenant (a fresh context each): any hit would be a cross-fingerprint hit; the target is zero;
- the threshold sweep: the same question set scored in this process with the same model and the cache's own
  rule (cosine threshold + same key terms), to show the hit rate / false hit trade-off around the default.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from psycopg import AsyncConnection, sql

from bench.common import Context, drop_schemas, markdown_table, percentile, rounded
from bench.embedder import embedder_process, wait_serving
from flywheel.common import rpc
from flywheel.common.embedded import free_port
from flywheel.common.model_building import model_building

DATA = Path(__file__).parent / "data" / "cache_paraphrases.yaml"
SYSTEM = ("You are the support assistant of a retail bank. Answer the customer's question in two or three "
          "sentences, from the bank's policy documents, and say so when they do not cover it.")
HEADER, TENANT = "x-flywheel-cache", "x-flywheel-tenant"
READY_TIMEOUT = 300.0
CONCURRENCY = 8
SWEEP = (0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.95)


def question_set() -> dict[str, Any]:
    return yaml.safe_load(DATA.read_text())


def casual(question: str) -> str:
    """The question as typed in a hurry: lower case, no final punctuation."""
    return question.lower().rstrip("?.! ")


class Door:
    """`POST /v1/chat/completions` of the inference process under test."""

    def __init__(self, address: str, token: str) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://{address}", timeout=600,
                                      headers={"authorization": f"Bearer {token}"})

    async def ask(self, question: str, *, system: str = SYSTEM, tenant: str = "", max_tokens: int = 16,
                  ) -> tuple[str, str, float]:
        """(x-flywheel-cache, the answer, seconds)."""
        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
        start = time.perf_counter()
        response = await self.http.post("/v1/chat/completions", json=body,
                                        headers={TENANT: tenant} if tenant else None)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"chat completion failed: {response.status_code} {response.text}")
        return response.headers[HEADER], response.json()["choices"][0]["message"]["content"], elapsed

    async def stream(self, question: str, *, max_tokens: int) -> tuple[str, float]:
        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens, "stream": True,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
        start = time.perf_counter()
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines()]
        elapsed = time.perf_counter() - start
        if response.status_code != 200 or "data: [DONE]" not in lines:
            raise RuntimeError(f"streamed chat completion failed: {response.status_code} {lines[-3:]}")
        return response.headers[HEADER], elapsed

    async def timed(self, question: str, *, max_tokens: int, tenant: str) -> dict[str, Any]:
        """One streamed generation: time to the first content delta, total seconds, completion tokens (the usage
        chunk), and x-flywheel-cache."""
        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
        start = time.perf_counter()
        ttft, usage = 0.0, {}
        async with self.http.stream("POST", "/v1/chat/completions", json=body, headers={TENANT: tenant}) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: "):])
                if not ttft and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    ttft = time.perf_counter() - start
                usage = chunk.get("usage") or usage
        elapsed = time.perf_counter() - start
        if response.status_code != 200 or not usage:
            raise RuntimeError(f"streamed chat completion failed: {response.status_code}")
        return {"cache": response.headers[HEADER], "ttft_s": ttft, "seconds": elapsed,
                "completion_tokens": usage["completion_tokens"]}

    model = ""

    async def close(self) -> None:
        await self.http.aclose()


def inference_process(ctx: Context, *, registry_addr: str, embedder_addr: str, model: str, embedding_model: str,
                      schema: str, ports: tuple[int, int, int], log: Path) -> subprocess.Popen:
    env = {**os.environ, "FLYWHEEL_HOME": str(ctx.infra.home), "FLYWHEEL_KAFKA_BOOTSTRAP": ctx.infra.kafka_bootstrap,
           "FLYWHEEL_DATABASE_URL": ctx.infra.database_url, "FLYWHEEL_TOKEN": ctx.infra.admin_token,
           "FLYWHEEL_REGISTRY_ADDR": registry_addr, "FLYWHEEL_EMBEDDER_ADDR": embedder_addr,
           "FLYWHEEL_LOG_LEVEL": "WARNING", "FLYWHEEL_INFERENCE_GRPC_PORT": str(ports[0]),
           "FLYWHEEL_INFERENCE_HTTP_PORT": str(ports[1]), "FLYWHEEL_INFERENCE_METRICS_PORT": str(ports[2]),
           "FLYWHEEL_INFERENCE_MODELS": json.dumps([model]), "FLYWHEEL_INFERENCE_DB_SCHEMA": schema,
           "FLYWHEEL_INFERENCE_CONSUMER_GROUP": f"bench-cache-inference-{ctx.run_id}",
           "FLYWHEEL_INFERENCE_LLM_CACHE_EMBEDDING_MODEL": embedding_model}
    return subprocess.Popen([sys.executable, "-m", "flywheel.inference"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


async def wait_model(proc: subprocess.Popen, door: Door, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]  # noqa: ASYNC240 - it failed; a small file
            raise RuntimeError(f"inference exited with {proc.returncode}:\n{tail}")
        try:
            response = await door.http.get("/v1/models")
            if response.status_code == 200 and door.model in {m["id"] for m in response.json()["data"]}:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"inference did not serve {door.model} within {READY_TIMEOUT:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def promote(address: str, auth: Any, name: str, version: int) -> None:
    from flywheel.proto.registry.v1 import registry_service_pb2 as reg
    from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc

    async with rpc.channel(address, default_timeout=60, auth=auth) as channel:
        await reg_grpc.RegistryServiceStub(channel).SetAlias(
            reg.SetAliasRequest(model_name=name, alias="champion", version=version))


async def rows_stored(database_url: str, schema: str, tenant: str) -> int:
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}.llm_cache WHERE tenant = %s").format(
            sql.Identifier(schema)), (tenant,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def until_stored(database_url: str, schema: str, tenant: str, count: int) -> None:
    """The cache writes rows in the background after each answer: wait for them before asking paraphrases."""
    deadline = time.monotonic() + 60
    while await rows_stored(database_url, schema, tenant) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} cache rows of tenant {tenant} not stored within 60s")
        await asyncio.sleep(0.1)


def stats(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": rounded(percentile(seconds, 50) * 1000), "p99_ms": rounded(percentile(seconds, 99) * 1000),
            "calls": len(seconds)}


async def latency(door: Door, questions: list[str], paraphrase: tuple[str, str], *, hits: int, database_url: str,
                  schema: str) -> dict[str, dict[str, float]]:
    """Tenant "" (the default), apart from the hit-rate phase's."""
    miss_s: list[float] = []
    for q in questions:
        kind, _, elapsed = await door.ask(q, max_tokens=32)
        if kind != "miss":
            raise RuntimeError(f"a first question was answered {kind}: {q!r}")
        miss_s.append(elapsed)
    original, rephrased = paraphrase
    if (await door.ask(original, max_tokens=32))[0] != "miss":
        raise RuntimeError("the semantic probe's question was cached already")
    await until_stored(database_url, schema, "", len(questions) + 1)
    out: dict[str, list[float]] = {"exact": [], "semantic": [], "exact_streamed": []}
    for _ in range(hits):
        kind, _, elapsed = await door.ask(questions[0], max_tokens=32)
        assert kind == "exact", kind
        out["exact"].append(elapsed)
    for _ in range(hits):
        kind, _, elapsed = await door.ask(rephrased, max_tokens=32)
        if kind != "semantic":
            raise RuntimeError(f"the paraphrase {rephrased!r} of {original!r} was answered {kind}")
        out["semantic"].append(elapsed)
    for _ in range(hits):
        kind, elapsed = await door.stream(questions[0], max_tokens=32)
        assert kind == "exact", kind
        out["exact_streamed"].append(elapsed)
    return {"miss": stats(miss_s), **{k: stats(v) for k, v in out.items()}}


async def gather_limited(calls: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Any) -> Any:
        async with gate:
            return await call
    return await asyncio.gather(*(one(c) for c in calls))


async def door_single_stream(door: Door, questions: list[str], max_tokens: int) -> dict[str, Any]:
    """Single-stream generations through the OpenAI door (SSE), each a miss (a tenant of its own, so the cache
    phases never see them): median tokens/s (completion tokens over the whole call) and time to first token."""
    runs = [await door.timed(q, max_tokens=max_tokens, tenant="bench-door") for q in questions]
    if any(r["cache"] != "miss" for r in runs):
        raise RuntimeError(f"a door measurement was served from the cache: {[r['cache'] for r in runs]}")
    tps = sorted(r["completion_tokens"] / r["seconds"] for r in runs)
    ttft = sorted(r["ttft_s"] for r in runs)
    return {"tokens_per_s": rounded(tps[len(tps) // 2]), "ttft_ms": rounded(ttft[len(ttft) // 2] * 1000),
            "completion_tokens": [r["completion_tokens"] for r in runs], "calls": len(runs)}


async def hit_rate(door: Door, data: dict[str, Any], database_url: str, schema: str) -> dict[str, Any]:
    tenant = "bench-hit-rate"
    pairs, near = data["pairs"], data["near_misses"]
    first = await gather_limited([door.ask(p["question"], tenant=tenant) for p in pairs])
    if any(kind != "miss" for kind, _, _ in first):
        raise RuntimeError("a question of the set hit before it was asked")
    answers = {p["id"]: text for p, (_, text, _) in zip(pairs, first, strict=True)}
    await until_stored(database_url, schema, tenant, len(pairs))
    hits, wrong, missed = [], [], []
    own = {p["id"]: {answers[p["id"]]} for p in pairs}  # the answers a pair's question may be given
    for p in pairs:  # one at a time: a paraphrase that misses is stored, and later ones see it
        kind, text, _ = await door.ask(p["paraphrase"], tenant=tenant)
        if kind == "miss":
            missed.append(p["id"])
            own[p["id"]].add(text)
        elif text == answers[p["id"]]:
            hits.append(p["id"])
        else:
            wrong.append(p["id"])
    casual_hits, casual_wrong = 0, []
    for p in pairs:
        kind, text, _ = await door.ask(casual(p["question"]), tenant=tenant)
        if kind != "miss":
            casual_hits += text in own[p["id"]]
            if text not in own[p["id"]]:
                casual_wrong.append(p["id"])
    false_hits = []
    for n in near:
        kind, _, _ = await door.ask(n["question"], tenant=tenant)
        if kind != "miss":
            false_hits.append(n["question"])
    unique = len(set(answers.values())) == len(answers)
    return {"pairs": len(pairs), "semantic_hits": len(hits), "hit_rate": rounded(len(hits) / len(pairs)),
            "wrong_question_hits": wrong, "paraphrases_missed": missed, "near_misses": len(near),
            "near_miss_hits": false_hits, "answers_unique": unique,
            "casual_variant_hit_rate": rounded(casual_hits / len(pairs)), "casual_variant_wrong_hits": casual_wrong}


async def isolation(door: Door, data: dict[str, Any], count: int) -> dict[str, int]:
    """Every question word for word in a fresh context (its own system prompt; its own tenant): any hit came
    from the hit-rate phase's entries, i.e. across fingerprints."""
    questions = [p["question"] for p in data["pairs"]][:count]
    systems = await gather_limited([door.ask(q, tenant="bench-hit-rate", system=f"{SYSTEM} (variant {i})")
                                    for i, q in enumerate(questions)])
    tenants = await gather_limited([door.ask(q, tenant=f"bench-tenant-{i}") for i, q in enumerate(questions)])
    return {"asked": 2 * len(questions), "other_system_prompt_hits": sum(k != "miss" for k, _, _ in systems),
            "other_tenant_hits": sum(k != "miss" for k, _, _ in tenants)}


def sweep(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The question set scored in-process with the same model and rule as the cache: per threshold, how many
    paraphrases would hit their own question, hit another one, and how many near-misses would hit."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from flywheel.embedder.catalog import shipped_model_dir
    from flywheel.inference.cache.service import same_key_terms

    with model_building():
        model = SentenceTransformer(str(shipped_model_dir()), device="cpu", local_files_only=True)
    pairs = data["pairs"]
    originals = [p["question"] for p in pairs]
    vectors = {k: model.encode(v, normalize_embeddings=True, show_progress_bar=False) for k, v in (
        ("o", originals), ("p", [p["paraphrase"] for p in pairs]), ("c", [casual(q) for q in originals]),
        ("n", [n["question"] for n in data["near_misses"]]))}

    def match(sims: Any, question: str, threshold: float) -> int | None:
        for j in np.argsort(-sims):
            if sims[j] < threshold:
                return None
            if same_key_terms(question, originals[j]):
                return int(j)
        return None
    para, near, loose = vectors["p"] @ vectors["o"].T, vectors["n"] @ vectors["o"].T, vectors["c"] @ vectors["o"].T
    out = []
    for t in SWEEP:
        found = [match(para[i], pairs[i]["paraphrase"], t) for i in range(len(pairs))]
        false = [match(near[k], n["question"], t) for k, n in enumerate(data["near_misses"])]
        typed = [match(loose[i], casual(originals[i]), t) for i in range(len(pairs))]
        out.append({"threshold": t, "hit_rate": rounded(sum(f == i for i, f in enumerate(found)) / len(pairs)),
                    "casual_variant_hit_rate": rounded(sum(f == i for i, f in enumerate(typed)) / len(pairs)),
                    "wrong_question_hits": sum(f is not None and f != i for i, f in enumerate(found)),
                    "near_miss_hits": sum(f is not None for f in false)})
    return out


async def run(ctx: Context, files: Any, door_questions: list[str], door_tokens: int) -> dict[str, Any]:
    """The cache rows, and single streams through the door: `files` is the converted SmolLM2
    (llm.base.ensure_base)."""
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.inference.config import InferenceSettings
    from flywheel.inference.llm.base import register_base
    from flywheel.registry.config import RegistrySettings
    from flywheel.registry.main import RegistryApp

    quick = ctx.quick
    load_before = os.getloadavg()[0]  # other work on the machine slows the misses (generations), not the hits
    data = question_set()
    llm, embedding_model = f"bench-smollm2-cache-{ctx.run_id}", f"bench-minilm-cache-{ctx.run_id}"
    schema, embedder_schema = f"bench_cache_inference_{ctx.run_id}", f"bench_cache_embedder_{ctx.run_id}"
    registry_settings = RegistrySettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_cache_registry_{ctx.run_id}",
        consumer_group=f"bench-cache-registry-{ctx.run_id}",
        artifact_store=(ctx.infra.home / "artifacts").as_uri(), max_artifact_bytes=2 * 1024 * 1024 * 1024)
    registry = RegistryApp(registry_settings)
    embedder_port, ports = free_port(), (free_port(), free_port(), free_port())
    log = ctx.infra.home / f"bench-cache-inference-{ctx.run_id}.log"
    proc: subprocess.Popen | None = None
    door = Door(f"127.0.0.1:{ports[1]}", ctx.infra.admin_token)
    door.model = llm
    try:
        await registry.start()
        client = RegistryClient(registry.address, auth=ctx.infra.auth(), transfer_timeout=600)
        try:
            version, _ = await register_base(client, files, name=llm)
        finally:
            await client.close()
        await promote(registry.address, ctx.infra.auth(), llm, version.version)
        embedder_env = {"FLYWHEEL_EMBEDDER_DB_SCHEMA": embedder_schema,
                        "FLYWHEEL_EMBEDDER_CONSUMER_GROUP": f"bench-cache-embedder-{ctx.run_id}",
                        "FLYWHEEL_EMBEDDER_PROMOTIONS_GROUP": f"bench-cache-embedder-promotions-{ctx.run_id}"}
        with embedder_process(ctx, registry.address, embedding_model, embedder_port, free_port(), embedder_env) as emb:
            await wait_serving(emb, f"127.0.0.1:{embedder_port}")
            proc = inference_process(ctx, registry_addr=registry.address, embedder_addr=f"127.0.0.1:{embedder_port}",
                                     model=llm, embedding_model=embedding_model, schema=schema, ports=ports, log=log)
            await wait_model(proc, door, log)
            await door.ask(f"warm-up {uuid.uuid4().hex}", max_tokens=4)
            through_door = await door_single_stream(door, door_questions, door_tokens)
            ctx.steps.log(f"single stream through the door: {json.dumps(through_door)}")
            probe = next(p for p in data["pairs"] if p["id"] == "disputes-05")  # a paraphrase that hits at 0.9
            questions = [p["question"] for p in data["pairs"] if p is not probe][:4 if quick else 12]
            measured = await latency(door, questions, (probe["question"], probe["paraphrase"]),
                                     hits=50 if quick else 300, database_url=ctx.infra.database_url, schema=schema)
            ctx.steps.log(f"latency: {json.dumps(measured)}")
            rates = await hit_rate(door, data, ctx.infra.database_url, schema)
            ctx.steps.log(f"hit rate: {json.dumps(rates)}")
            isolated = await isolation(door, data, 12 if quick else len(data["pairs"]))
            ctx.steps.log(f"isolation: {json.dumps(isolated)}")
    except BaseException:
        if log.exists():
            ctx.steps.log(f"inference log (last lines):\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        await door.close()
        if proc is not None:
            stop(proc)
        await registry.stop()
        await drop_schemas(ctx.infra.database_url, [registry_settings.db_schema, embedder_schema, schema])
    defaults = InferenceSettings.model_fields
    settings = {"threshold": defaults["llm_cache_semantic_threshold"].default,
                "same_key_terms": defaults["llm_cache_semantic_same_key_terms"].default}
    load = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
    return {"door": through_door, "latency": measured, "hit_rate": rates, "isolation": isolated,
            "sweep": await asyncio.to_thread(sweep, data), "settings": settings, "load_average_1m": load}


def add_to(result: Any, cache: dict[str, Any]) -> None:
    """The cache rows, ratios, tables and targets into benchmark `generation`'s result."""
    lat, rates, iso, settings = cache["latency"], cache["hit_rate"], cache["isolation"], cache["settings"]
    labels = {"miss": "miss (generated, <= 32 new tokens)", "exact": "exact hit", "semantic": "semantic hit "
              "(paraphrase, embedder + pgvector)", "exact_streamed": "exact hit, streamed to [DONE]"}
    for key, label in labels.items():
        result.results.append({"what": "response cache", "system": label, **lat[key]})
    result.ratios["cache_exact_hit_p50/miss_p50"] = rounded(lat["exact"]["p50_ms"] / lat["miss"]["p50_ms"])
    result.ratios["cache_semantic_hit_p50/miss_p50"] = rounded(lat["semantic"]["p50_ms"] / lat["miss"]["p50_ms"])
    cross = iso["other_system_prompt_hits"] + iso["other_tenant_hits"]
    targets = {"exact cache hit p50 < 5 ms": lat["exact"]["p50_ms"] < 5.0,
               "zero cross-fingerprint semantic hits": cross == 0}
    result.extra.setdefault("targets_met", {}).update(targets)
    result.extra["cache"] = cache
    verdict = ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items())
    table = markdown_table(
        ["response cache (POST /v1/chat/completions)", "p50 ms", "p99 ms", "calls"],
        [[labels[k], f"{lat[k]['p50_ms']:.2f}", f"{lat[k]['p99_ms']:.2f}", lat[k]["calls"]] for k in labels],
        right=(1, 2, 3))
    sweep_table = markdown_table(
        ["threshold (same key terms)", "paraphrases hit their question", "hit another question",
         "lower-case variants hit", "near-misses hit (must be 0)"],
        [[f"{r['threshold']:.2f}{' (default)' if r['threshold'] == settings['threshold'] else ''}",
          f"{r['hit_rate']:.0%}", r["wrong_question_hits"], f"{r['casual_variant_hit_rate']:.0%}",
          f"{r['near_miss_hits']} / {rates['near_misses']}"] for r in cache["sweep"]], right=(1, 2, 3, 4))
    summary = (f"Response cache, live at the default threshold {settings['threshold']}: "
               f"{rates['semantic_hits']}/{rates['pairs']} paraphrases answered from their own question "
               f"({rates['hit_rate']:.0%}), {len(rates['wrong_question_hits'])} from another question; the same "
               f"questions typed in lower case without punctuation hit {rates['casual_variant_hit_rate']:.0%}; "
               f"{len(rates['near_miss_hits'])}/{rates['near_misses']} near-misses hit; cross-fingerprint hits "
               f"{cross} of {iso['asked']} identical questions asked under another system prompt or tenant. "
               f"Exact hit p50 {lat['exact']['p50_ms']:.2f} ms (p99 {lat['exact']['p99_ms']:.2f}), semantic hit "
               f"p50 {lat['semantic']['p50_ms']:.2f} ms, miss p50 {lat['miss']['p50_ms']:.0f} ms. Targets: {verdict}.")
    door = cache["door"]
    hf = next(r for r in result.results if r["system"] == "HF generate")
    result.results.append({"what": "single stream", "system": "engine float32 through POST /v1/chat/completions",
                           "tokens_per_s": door["tokens_per_s"], "ttft_ms": door["ttft_ms"],
                           "completion_tokens": door["completion_tokens"]})
    result.ratios["door_single_stream_tokens_per_s/hf_generate"] = rounded(door["tokens_per_s"] / hf["tokens_per_s"])
    result.ratios["door_single_stream_ttft/hf_generate"] = rounded(door["ttft_ms"] / hf["ttft_ms"])
    door_target = result.ratios["door_single_stream_tokens_per_s/hf_generate"] >= 0.9
    result.extra["targets_met"]["single stream through the door >= 0.9x generate"] = door_target
    tokens = door["completion_tokens"]
    door_table = markdown_table(
        ["single stream", "tokens/s", "time to first token ms", "vs HF generate (tokens/s, ttft)"],
        [["HF generate, in-process", hf["tokens_per_s"], hf["ttft_ms"], "1, 1"],
         ["inference (own process) through POST /v1/chat/completions, SSE", door["tokens_per_s"], door["ttft_ms"],
          f"{result.ratios['door_single_stream_tokens_per_s/hf_generate']}, "
          f"{result.ratios['door_single_stream_ttft/hf_generate']}"]], right=(1, 2))
    door_summary = (f"Through the door: {door['calls']} questions streamed one at a time (greedy, a tenant of their "
                    f"own so every one is a miss), {min(tokens)}-{max(tokens)} completion tokens each (the model may "
                    "end before max_tokens, so the prompt's share of the time is larger than in the fixed-length "
                    "rows: a conservative ratio); tokens/s = completion tokens / the whole call. Target single "
                    f"stream >= 0.9x generate through the door: {'met' if door_target else 'NOT met'}.")
    result.tables += [door_table, door_summary, table, sweep_table, summary]
    result.notes += (" Response cache rows: inference (its own process, default cache settings) serving the same "
                     "SmolLM2 with the embedder's all-MiniLM-L6-v2 for the semantic cache; sequential calls through "
                     "POST /v1/chat/completions (httpx, kept-alive connection, bearer token); questions and "
                     "paraphrases from bench/data/cache_paraphrases.yaml; the threshold sweep scores the same set "
                     "in-process with the cache's own rule. " + summary)
