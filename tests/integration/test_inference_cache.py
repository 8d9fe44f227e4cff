"""The LLM response cache of a running inference, on the session's broker and database, with an embedder (its
tiny test model) for the semantic cache: exact hits through `/v1/chat/completions` (stock `openai` client,
streamed and not) and gRPC Generate, semantic hits on a paraphrase, and isolation: the same question under
another system prompt, tenant, model version or prompt version is a miss of both caches (the identical
question, so a semantic cache scoped wrongly would hit at similarity 1.0). Sampled requests bypass it;
a promotion evicts the old version's entries.

The tiny embedder has random weights: every text is fairly close to every other. The threshold here (0.98) sits
between the paraphrase used (0.991 from its original) and an unrelated question (0.90); the real model's hit
rate is measured by `python -m bench --only generation`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from flywheel.common import rpc
from flywheel.common.clients.registry import RegistryClient
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.main import EmbedderApp
from flywheel.embedder.testing import register_tiny_model
from flywheel.inference.cache.fingerprint import CacheRequest
from flywheel.inference.config import InferenceSettings
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_tiny_llm_artifact
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.inference.v1 import generation_service_pb2 as gpb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as gpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.integration import registry_client
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
LLM, EMB = f"tiny-cached-{U}", f"tiny-cache-emb-{U}"
QUESTION, PARAPHRASE, UNRELATED = "How do I freeze my card?", "How can I freeze my card?", "What is a chargeback?"
HEADER, TENANT = "x-flywheel-cache", "x-flywheel-tenant"
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 8}


def chat(question: str = QUESTION, system: str | None = None) -> list[dict[str, str]]:
    system = system or f"You answer from the bank's documents ({uuid.uuid4().hex[:6]})."  # fresh context per call
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
async def embedder(infra, registry_app, registry, tmp_path_factory) -> AsyncIterator[EmbedderApp]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("cache-embedder")
    client = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"))
    version = await register_tiny_model(client, EMB, tmp / "v1", seed=2)
    await registry.SetAlias(rpb.SetAliasRequest(model_name=EMB, alias="champion", version=version.version))
    await client.close()
    app = EmbedderApp(EmbedderSettings(
        **shared_settings(infra), registry_addr=registry_app.address, db_schema=f"embedder_{U}",
        consumer_group=f"embedder-{U}", promotions_group=f"embedder-promotions-{U}", model=EMB, bootstrap=False,
        cache_dir=tmp / "cache", max_wait_ms=2.0, initial_load_timeout=60.0))
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("cache-llm-artifacts")
    return {"v1": build_tiny_llm_artifact(root / "v1", seed=3), "v2": build_tiny_llm_artifact(root / "v2", seed=6)}


@pytest.fixture(scope="module")
async def app(infra, registry, registry_app, embedder, artifacts, tmp_path_factory) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    mv = await registry_client.register(registry, LLM, artifacts["v1"], kind=common_pb2.MODEL_KIND_LLM,
                                        framework="transformers")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=LLM, alias="champion", version=mv.version))
    settings = InferenceSettings(**shared_settings(infra), http_port=0, registry_addr=registry_app.address,
                                 models=[LLM], db_schema=f"inference_{U}", consumer_group=f"inference-{U}",
                                 embedder_addr=embedder.address,
                                 llm_cache_dir=Path(tmp_path_factory.mktemp("cache-llm")),
                                 llm_cache_embedding_model=EMB, llm_cache_semantic_threshold=0.98)
    application = InferenceApp(settings)
    await application.start()

    async def served() -> bool:
        assert application.llm is not None
        return LLM in {m.name for m in application.llm.models()}
    await polling.eventually(served, what=f"{LLM} served")
    yield application
    await application.stop()


@pytest.fixture
async def oai(app, infra) -> AsyncIterator[openai.AsyncOpenAI]:  # type: ignore[no-untyped-def]
    async with openai.AsyncOpenAI(api_key=infra.tokens.predict, base_url=f"http://{app.http_address}/v1",
                                  max_retries=0, timeout=60) as c:
        yield c


async def ask(oai: openai.AsyncOpenAI, messages: list[dict[str, str]], *, tenant: str | None = None,
              **params: Any) -> tuple[str, Any]:
    """(x-flywheel-cache, the answer) of one chat completion through the stock client."""
    raw = await oai.chat.completions.with_raw_response.create(
        model=LLM, messages=messages, **{**GREEDY, **params}, extra_headers={TENANT: tenant} if tenant else None)
    return raw.headers[HEADER], raw.parse()


async def stream(app: InferenceApp, token: str, messages: list[dict[str, str]], **params: Any
                 ) -> tuple[str, list[Any], bool]:
    """(x-flywheel-cache, the decoded SSE data chunks, whether [DONE] closed the stream)."""
    body = {"model": LLM, "messages": messages, "stream": True, **GREEDY, **params}
    async with httpx.AsyncClient(base_url=f"http://{app.http_address}", timeout=60,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, await response.aread()
            data = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    return response.headers[HEADER], [json.loads(d) for d in data if d != "[DONE]"], data[-1:] == ["[DONE]"]


def text_of(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def generated(app: InferenceApp) -> int:
    assert app.llm is not None
    return app.llm.engine(LLM).stats.admitted


async def test_an_exact_hit_returns_the_same_answer_marked_exact(app, oai) -> None:  # type: ignore[no-untyped-def]
    messages = chat()
    before, hits = generated(app), metric("flywheel_llm_cache_responses_total", outcome="exact")
    kind, first = await ask(oai, messages, user="u1")
    assert kind == "miss" and first.choices[0].message.content
    kind, again = await ask(oai, messages, user="someone-else")  # `user` does not change the answer
    assert kind == "exact"
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert (again.usage.prompt_tokens, again.usage.completion_tokens) == \
        (first.usage.prompt_tokens, first.usage.completion_tokens)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens  # nothing computed
    assert again.id != first.id
    assert generated(app) == before + 1
    assert metric("flywheel_llm_cache_responses_total", outcome="exact") == hits + 1
    # The shared level: another replica (or this one restarted) finds it in the database.
    await app.llm_cache.flush()
    app.llm_cache.memory.clear()
    kind, shared = await ask(oai, messages)
    assert kind == "exact" and shared.choices[0].message.content == first.choices[0].message.content
    assert generated(app) == before + 1
    # Another max_tokens, stop or seed-less sampling is another request.
    assert (await ask(oai, messages, max_tokens=7))[0] == "miss"
    assert (await ask(oai, messages, stop=["\n\n"]))[0] == "miss"


async def test_a_paraphrase_is_a_semantic_hit_and_an_unrelated_question_is_not(app, oai) -> None:  # type: ignore[no-untyped-def]
    system = f"You answer from the bank's documents ({U}, semantic)."
    kind, first = await ask(oai, chat(QUESTION, system))
    assert kind == "miss"
    await app.llm_cache.flush()
    before = generated(app)
    kind, paraphrased = await ask(oai, chat(PARAPHRASE, system))
    assert kind == "semantic"
    assert paraphrased.choices[0].message.content == first.choices[0].message.content
    assert generated(app) == before
    assert (await ask(oai, chat(UNRELATED, system)))[0] == "miss"
    assert generated(app) == before + 1
    # The paraphrase was answered from the cache, not stored as an entry of its own: asked again, still semantic.
    assert (await ask(oai, chat(PARAPHRASE, system)))[0] == "semantic"


@pytest.mark.parametrize("what", ["system prompt", "tenant"])
async def test_the_same_question_in_another_context_misses_both_caches(app, oai, what) -> None:  # type: ignore[no-untyped-def]
    system = f"You answer from the bank's documents ({U}, {what})."
    assert (await ask(oai, chat(QUESTION, system), tenant="northwind"))[0] == "miss"
    await app.llm_cache.flush()
    assert (await ask(oai, chat(QUESTION, system), tenant="northwind"))[0] == "exact"
    assert (await ask(oai, chat(PARAPHRASE, system), tenant="northwind"))[0] == "semantic"
    if what == "system prompt":
        other = {"messages": chat(QUESTION, system + " Be brief."), "tenant": "northwind"}
        paraphrase = {"messages": chat(PARAPHRASE, system + " Be brief."), "tenant": "northwind"}
    else:
        other = {"messages": chat(QUESTION, system), "tenant": "contoso"}
        paraphrase = {"messages": chat(PARAPHRASE, system), "tenant": "contoso"}
    before, semantic = generated(app), metric("flywheel_llm_cache_lookups_total", cache="semantic", result="hit")
    # The identical question: similarity 1.0 to the stored one, yet another context: generated.
    assert (await ask(oai, other.pop("messages"), **other))[0] == "miss"
    await app.llm_cache.flush()
    assert (await ask(oai, paraphrase.pop("messages"), **paraphrase))[0] == "semantic"  # its own entry now
    assert generated(app) == before + 1
    assert metric("flywheel_llm_cache_lookups_total", cache="semantic", result="hit") == semantic + 1


async def test_another_prompt_version_misses_both_caches(app) -> None:  # type: ignore[no-untyped-def]
    """Applications fill the prompt template fields of the fingerprint; the cache is driven directly here, on the
    running service's database and embedder."""
    from flywheel.inference.llm.engine import Usage

    cache, served = app.llm_cache, app.llm.model(LLM)
    system = f"Answer from the policies ({U}, prompt)."

    def request(question: str, version: int) -> CacheRequest:
        return CacheRequest.of(served, SamplingParams(temperature=0.0, max_tokens=8), messages=chat(question, system),
                               application="support", prompt_name=f"support-prompt-{U}", prompt_version=version)

    first = await cache.lookup(request(QUESTION, 1))
    assert first.kind == "miss" and first.vector is not None
    cache.remember(first, "Freeze it in the app under Card settings.", [5, 6], "stop", Usage(20, 2),
                   {"citations": [{"chunk_id": "cards-3", "title": "Cards"}]})
    await cache.flush()
    exact = await cache.lookup(request(QUESTION, 1))
    assert exact.kind == "exact" and exact.answer is not None and exact.answer.extra["citations"][0]["title"] == "Cards"
    semantic = await cache.lookup(request(PARAPHRASE, 1))
    assert semantic.kind == "semantic" and semantic.similarity is not None and semantic.similarity >= 0.98
    assert semantic.answer is not None and semantic.answer.text.startswith("Freeze it")
    for question in (QUESTION, PARAPHRASE):
        assert (await cache.lookup(request(question, 2))).kind == "miss"
    # Promoting prompt version 2 evicts version 1's entry (memory and database).
    assert await cache.store.count(exact_key=first.key) == 1
    assert await cache.invalidate(f"support-prompt-{U}", 2) == 2
    assert await cache.store.count(exact_key=first.key) == 0
    assert (await cache.lookup(request(QUESTION, 1))).kind == "miss"


async def test_sampled_requests_bypass_the_cache_and_seeded_ones_do_not(app, oai) -> None:  # type: ignore[no-untyped-def]
    messages = chat(f"{QUESTION} ({uuid.uuid4().hex[:6]})")
    before, bypassed = generated(app), metric("flywheel_llm_cache_responses_total", outcome="bypass")
    for _ in range(2):
        assert (await ask(oai, messages, temperature=0.9))[0] == "miss"
    assert generated(app) == before + 2
    assert metric("flywheel_llm_cache_responses_total", outcome="bypass") == bypassed + 2
    await app.llm_cache.flush()
    assert await app.llm_cache.store.count(question=messages[-1]["content"]) == 0  # nothing stored
    kind, seeded = await ask(oai, messages, temperature=0.9, seed=11)
    assert kind == "miss"
    kind, again = await ask(oai, messages, temperature=0.9, seed=11)
    assert kind == "exact" and again.choices[0].message.content == seeded.choices[0].message.content
    assert (await ask(oai, messages, temperature=0.9, seed=12))[0] == "miss"


async def test_a_streamed_miss_is_stored_and_a_hit_replays_as_a_stream(app, oai, infra) -> None:  # type: ignore[no-untyped-def]
    messages = chat()
    kind, chunks, done = await stream(app, infra.tokens.predict, messages, stream_options={"include_usage": True})
    assert (kind, done) == ("miss", True)
    answer = text_of(chunks)
    await app.llm_cache.flush()
    before = generated(app)
    kind, replay, done = await stream(app, infra.tokens.predict, messages, stream_options={"include_usage": True})
    assert (kind, done) == ("exact", True)
    assert text_of(replay) == answer
    assert replay[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finish_reasons(replay) == finish_reasons(chunks) and len(finish_reasons(replay)) == 1
    assert replay[-1]["choices"] == [] and replay[-1]["usage"]["completion_tokens"] == \
        chunks[-1]["usage"]["completion_tokens"]
    # The streamed answer serves the same request unstreamed, and a paraphrase streamed.
    kind, plain = await ask(oai, messages)
    assert kind == "exact" and plain.choices[0].message.content == answer
    paraphrased = [messages[0], {"role": "user", "content": PARAPHRASE}]
    kind, semantic, done = await stream(app, infra.tokens.predict, paraphrased)
    assert (kind, done, text_of(semantic)) == ("semantic", True, answer)
    assert generated(app) == before


async def test_a_stream_cut_short_is_not_stored(app, infra) -> None:  # type: ignore[no-untyped-def]
    messages = chat(f"{QUESTION} ({uuid.uuid4().hex[:6]})")
    body = {"model": LLM, "messages": messages, "stream": True, "temperature": 0, "max_tokens": 150}
    async with httpx.AsyncClient(base_url=f"http://{app.http_address}",
                                 headers={"authorization": f"Bearer {infra.tokens.predict}"}) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers[HEADER] == "miss"
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    break  # the client goes away mid-answer
    engine = app.llm.engine(LLM)

    async def freed() -> bool:
        return engine.stats.running == 0
    await polling.eventually(freed, what="the abandoned generation cancelled")
    await app.llm_cache.flush()
    assert await app.llm_cache.store.count(question=messages[-1]["content"]) == 0
    kind, _, _ = await stream(app, infra.tokens.predict, messages, max_tokens=150)
    assert kind == "miss"


async def test_grpc_generate_answers_through_the_cache_with_metadata(app, infra) -> None:  # type: ignore[no-untyped-def]
    messages = chat()
    request = gpb.GenerateRequest(model=LLM, params=gpb.SamplingParams(temperature=0, max_tokens=8),
                                  messages=gpb.Messages(messages=[gpb.ChatMessage(**m) for m in messages]))

    async def call(tenant: str = "") -> tuple[str, str, str]:
        async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
            call = gpb_grpc.GenerationServiceStub(channel).Generate(
                request, metadata=((TENANT, tenant),) if tenant else None)
            text = "".join([r.text async for r in call])
            initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
        return text, initial[HEADER], trailing[HEADER]

    text, initial, trailing = await call()
    assert (initial, trailing) == ("miss", "miss") and text
    await app.llm_cache.flush()
    assert await call() == (text, "exact", "exact")
    assert (await call("contoso"))[1] == "miss"


async def test_promotion_of_a_new_version_misses_and_evicts_the_old_entries(app, oai, registry, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Last in this module: it changes the version served."""
    old = app.llm.model(LLM).version
    system = f"You answer from the bank's documents ({U}, promotion)."
    assert (await ask(oai, chat(QUESTION, system)))[0] == "miss"
    assert (await ask(oai, chat(QUESTION, system)))[0] == "exact"
    await app.llm_cache.flush()
    assert await app.llm_cache.store.count(model=LLM, model_version=old) > 0
    mv = await registry_client.register(registry, LLM, artifacts["v2"], kind=common_pb2.MODEL_KIND_LLM,
                                        framework="transformers")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=LLM, alias="champion", version=mv.version))

    async def swapped() -> bool:
        return app.llm.model(LLM).version == mv.version
    await polling.eventually(swapped, what="the new version served")
    before = generated(app)
    # The identical question, and its paraphrase: both caches miss on the new version.
    assert (await ask(oai, chat(PARAPHRASE, system)))[0] == "miss"
    assert (await ask(oai, chat(QUESTION, system)))[0] == "semantic"  # the new version's own entry
    assert generated(app) == before + 1

    async def evicted() -> bool:
        return await app.llm_cache.store.count(model=LLM, model_version=old) == 0 and not any(
            a.model == LLM and a.model_version == old for a, _ in app.llm_cache.memory._entries.values())
    await polling.eventually(evicted, what="the old version's entries evicted")


async def test_an_embedder_failure_degrades_to_the_exact_cache(app, infra) -> None:  # type: ignore[no-untyped-def]
    """The semantic lookup fails (embedder down): the request goes on as a miss, its answer is stored for exact
    lookups, and nothing raises. A cache on the running service's table, with an embedder that always fails."""
    from flywheel.common.errors import Unavailable
    from flywheel.inference.cache.service import CacheSettings, ResponseCache
    from flywheel.inference.cache.store import CacheStore
    from flywheel.inference.llm.engine import Usage

    class DownEmbedder:
        calls = 0

        async def embed(self, texts: Any, **kwargs: Any) -> Any:
            DownEmbedder.calls += 1
            raise Unavailable("embedder at 127.0.0.1:1 is unreachable")

    errors = metric("flywheel_llm_cache_errors_total", stage="embed")
    cache = ResponseCache(CacheSettings(), CacheStore(infra.database_url, f"inference_{U}"), DownEmbedder())  # type: ignore[arg-type]
    await cache.start()
    try:
        request = CacheRequest.of(app.llm.model(LLM), SamplingParams(temperature=0.0, max_tokens=8),
                                  messages=chat(f"{QUESTION} ({uuid.uuid4().hex[:6]})"))
        first = await cache.lookup(request)
        assert first.kind == "miss" and first.vector is None and DownEmbedder.calls == 1
        assert metric("flywheel_llm_cache_errors_total", stage="embed") == errors + 1
        cache.remember(first, "Freeze it in the app.", [5], "stop", Usage(12, 1))
        await cache.flush()
        cache.memory.clear()
        again = await cache.lookup(request)
        assert again.kind == "exact" and again.answer is not None and again.answer.text == "Freeze it in the app."
    finally:
        await cache.stop()
