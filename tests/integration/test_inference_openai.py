"""The doors of generative serving against a running inference: the stock `openai` client (chat streamed and
not, stop strings, seeds, usage, models, embeddings through a running embedder, errors as the client's
exception types) on the OpenAI-compatible REST routes, and gRPC `Generate` (flywheel.inference.v1)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flywheel.common import rpc
from flywheel.common.clients.registry import RegistryClient
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.main import EmbedderApp
from flywheel.embedder.testing import register_tiny_model
from flywheel.inference.config import InferenceSettings
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
LLM, EMB = f"tiny-chat-{U}", f"tiny-emb-{U}"
GENERATION = "flywheel.inference.v1.GenerationService"
CHAT = [{"role": "system", "content": "You answer from the bank's documents."},
        {"role": "user", "content": "How do I freeze my card?"}]


@pytest.fixture(scope="module")
async def embedder(infra, registry_app, registry, tmp_path_factory) -> AsyncIterator[EmbedderApp]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("openai-embedder")
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
async def app(infra, registry, registry_app, embedder, tmp_path_factory) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("openai-llm")
    mv = await registry_client.register(registry, LLM, build_tiny_llm_artifact(root / "base", seed=3),
                                        kind=common_pb2.MODEL_KIND_LLM, framework="transformers")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=LLM, alias="champion", version=mv.version))
    settings = InferenceSettings(**shared_settings(infra), http_port=0, registry_addr=registry_app.address,
                                 models=[LLM], db_schema=f"inference_{U}", consumer_group=f"inference-{U}",
                                 embedder_addr=embedder.address, llm_cache_dir=Path(root / "cache"),
                                 # These tests are about the engine behind the doors (streams, queue, cancels):
                                 # no response cache in front (test_inference_cache.py tests it).
                                 llm_cache_enabled=False)
    application = InferenceApp(settings)
    await application.start()

    async def served() -> bool:
        assert application.llm is not None
        return LLM in {m.name for m in application.llm.models()}
    await polling.eventually(served, what=f"{LLM} served")
    yield application
    await application.stop()


def client(app: InferenceApp, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=token, base_url=f"http://{app.http_address}/v1", max_retries=0, timeout=60)


@pytest.fixture
async def oai(app, infra) -> AsyncIterator[openai.AsyncOpenAI]:  # type: ignore[no-untyped-def]
    async with client(app, infra.tokens.predict) as c:
        yield c


async def stream_text(oai: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = [c async for c in await oai.chat.completions.create(model=LLM, messages=CHAT, stream=True, **kwargs)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def test_chat_streamed_and_not_give_the_same_greedy_answer(oai) -> None:  # type: ignore[no-untyped-def]
    answer = await oai.chat.completions.create(model=LLM, messages=CHAT, temperature=0, max_tokens=12, user="u1")
    assert answer.id.startswith("chatcmpl-") and answer.model == LLM and answer.object == "chat.completion"
    assert answer.created > 0 and len(answer.choices) == 1
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    text, chunks = await stream_text(oai, temperature=0, max_tokens=12, stream_options={"include_usage": True})
    assert text == choice.message.content
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    # include_usage: the last chunk carries the usage and no choice; the others carry none.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(chunks[-1].usage, key) == getattr(answer.usage, key)
    # The second time the prompt's keys/values come from the prefix cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage no chunk has usage.
    _, plain = await stream_text(oai, temperature=0, max_tokens=12)
    assert all(c.usage is None for c in plain)


async def test_max_tokens_ends_with_length(oai) -> None:  # type: ignore[no-untyped-def]
    for key in ("max_tokens", "max_completion_tokens"):
        answer = await oai.chat.completions.create(model=LLM, messages=CHAT, temperature=0, **{key: 3})
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens == 3


async def test_stop_strings_cut_the_answer(oai) -> None:  # type: ignore[no-untyped-def]
    full = (await oai.chat.completions.create(model=LLM, messages=CHAT, temperature=0, max_tokens=20)
            ).choices[0].message.content
    assert full and len(full) >= 4, full
    stop = full[len(full) // 2:len(full) // 2 + 2]
    expected = full[:full.index(stop)]
    for given in (stop, [stop, "\u2603never"]):
        answer = await oai.chat.completions.create(model=LLM, messages=CHAT, temperature=0, max_tokens=20, stop=given)
        assert answer.choices[0].message.content == expected
        assert answer.choices[0].finish_reason == "stop"
        text, _ = await stream_text(oai, temperature=0, max_tokens=20, stop=given)
        assert text == expected


async def test_a_seed_reproduces_a_sampled_answer(oai) -> None:  # type: ignore[no-untyped-def]
    kwargs: dict[str, Any] = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    first = await oai.chat.completions.create(model=LLM, messages=CHAT, seed=7, **kwargs)
    again = await oai.chat.completions.create(model=LLM, messages=CHAT, seed=7, **kwargs)
    assert first.choices[0].message.content == again.choices[0].message.content
    text, _ = await stream_text(oai, seed=7, **kwargs)
    assert text == first.choices[0].message.content
    others = {(await oai.chat.completions.create(model=LLM, messages=CHAT, seed=s, **kwargs)).choices[0].message.content
              for s in (8, 9, 10)}
    assert others != {first.choices[0].message.content}


async def test_models_lists_the_llm_and_the_embedding_model(oai, app) -> None:  # type: ignore[no-untyped-def]
    models = {m.id: m for m in (await oai.models.list()).data}
    assert LLM in models and EMB in models
    assert models[LLM].owned_by == "flywheel" and models[LLM].model_extra["kind"] == "llm"
    assert models[EMB].model_extra["kind"] == "embedding"
    assert (await oai.models.retrieve(LLM)).id == LLM
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")


async def test_embeddings_through_the_embedder(oai) -> None:  # type: ignore[no-untyped-def]
    texts = ["card fees abroad", "open a dispute", "card fees abroad"]
    result = await oai.embeddings.create(model=EMB, input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert {len(v) for v in vectors} == {32}
    assert vectors[0] == pytest.approx(vectors[2]) and vectors[0] != pytest.approx(vectors[1])
    as_floats = await oai.embeddings.create(model=EMB, input=texts, encoding_format="float")
    assert as_floats.data[1].embedding == pytest.approx(vectors[1], abs=1e-6)
    assert result.usage.prompt_tokens > 0 and result.model == EMB
    single = await oai.embeddings.create(model=EMB, input="open a dispute", encoding_format="float")
    assert single.data[0].embedding == pytest.approx(vectors[1], abs=1e-5)
    with pytest.raises(openai.NotFoundError):
        await oai.embeddings.create(model="no-such-embedder", input="x")
    with pytest.raises(openai.BadRequestError):
        await oai.embeddings.create(model=EMB, input=[])


@pytest.mark.parametrize("kwargs, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"stop": [1, 2]}, "stop"),
    ({"seed": "seven"}, "seed"),
    ({"messages": [{"role": "user", "content": "fees " * 400}]}, None),  # over the tiny model's 256 tokens
])
async def test_bad_requests_are_400(oai, kwargs, param) -> None:  # type: ignore[no-untyped-def]
    request = {"model": LLM, "messages": CHAT, **kwargs}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await oai.chat.completions.create(**request, stream=stream)
        assert caught.value.status_code == 400
        assert caught.value.code is None or caught.value.code == "invalid_request_error"
        body = caught.value.body
        assert isinstance(body, dict) and body["message"] and body["type"] == "invalid_request_error"
        if param is not None:
            assert body["param"] == param


async def test_unknown_model_is_404(oai) -> None:  # type: ignore[no-untyped-def]
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            await oai.chat.completions.create(model="no-such-llm", messages=CHAT, stream=stream)
        assert caught.value.code == "model_not_found" and LLM in caught.value.message  # names what is served


async def test_tokens_and_roles(app, infra) -> None:  # type: ignore[no-untyped-def]
    async with client(app, "not-a-token") as bogus:
        with pytest.raises(openai.AuthenticationError):
            await bogus.chat.completions.create(model=LLM, messages=CHAT, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            await bogus.models.list()
    async with httpx.AsyncClient(base_url=f"http://{app.http_address}") as http:
        response = await http.post("/v1/chat/completions", json={"model": LLM, "messages": CHAT})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    async with client(app, infra.tokens.reader) as reader:
        assert LLM in {m.id for m in (await reader.models.list()).data}  # listing is reading
        with pytest.raises(openai.PermissionDeniedError):
            await reader.chat.completions.create(model=LLM, messages=CHAT, max_tokens=2)
        with pytest.raises(openai.PermissionDeniedError):
            await reader.embeddings.create(model=EMB, input="x")


async def test_a_client_that_leaves_mid_stream_cancels_its_generation(app, infra) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    engine = app.llm.engine(LLM)
    cancelled = engine.stats.cancelled
    async with httpx.AsyncClient(base_url=f"http://{app.http_address}",
                                 headers={"authorization": f"Bearer {infra.tokens.predict}"}) as http:
        body = {"model": LLM, "messages": CHAT, "stream": True, "max_tokens": 150, "temperature": 0}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, await response.aread()
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: ") and '"content"' in line:
                    break

    async def freed() -> bool:
        return engine.stats.cancelled > cancelled and engine.stats.running == 0
    await polling.eventually(freed, what="the abandoned generation cancelled")


# ---------------------------------------------------------------- gRPC Generate


def generate_request(messages: list[dict[str, str]] | None = None, **params: Any) -> gpb.GenerateRequest:
    model, prompt = params.pop("model", LLM), params.pop("prompt", None)
    request = gpb.GenerateRequest(model=model, params=gpb.SamplingParams(**params), user="u1")
    if prompt is not None:
        request.prompt = prompt
    else:
        request.messages.CopyFrom(gpb.Messages(messages=[gpb.ChatMessage(**m) for m in (CHAT if messages is None
                                                                                           else messages)]))
    return request


async def test_grpc_generate_streams_the_same_answer_as_rest(app, infra, oai) -> None:  # type: ignore[no-untyped-def]
    rest = await oai.chat.completions.create(model=LLM, messages=CHAT, temperature=0, max_tokens=12)
    async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
        stub = gpb_grpc.GenerationServiceStub(channel)
        responses = [r async for r in stub.Generate(generate_request(temperature=0, max_tokens=12))]
    assert len(responses) > 1  # streamed, not one answer
    assert "".join(r.text for r in responses) == rest.choices[0].message.content
    assert all(r.text for r in responses[:-1]) and not any(r.finish_reason for r in responses[:-1])
    assert (responses[0].model, responses[0].model_version) == (LLM, app.llm.model(LLM).version)
    last = responses[-1]
    assert last.finish_reason == rest.choices[0].finish_reason
    assert last.usage.completion_tokens == rest.usage.completion_tokens == sum(r.token_count for r in responses)
    assert last.usage.prompt_tokens == rest.usage.prompt_tokens
    assert last.time_to_first_token_s > 0


async def test_grpc_generate_errors_are_statuses(app, infra) -> None:  # type: ignore[no-untyped-def]
    async def code(request: gpb.GenerateRequest, role: str | None = "predict") -> grpc.StatusCode:
        async with rpc.channel(app.grpc_address, auth=infra.tokens.auth(role) if role else None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in gpb_grpc.GenerationServiceStub(channel).Generate(request):
                    pass
        return caught.value.code()

    assert await code(generate_request(model="no-such-llm")) == grpc.StatusCode.NOT_FOUND
    assert await code(generate_request([])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request([{"role": "wizard", "content": "hi"}])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request(temperature=3.0)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request(top_p=0.0)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request(max_tokens=0)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request([{"role": "user", "content": "fees " * 400}])) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert await code(generate_request(), role=None) == grpc.StatusCode.UNAUTHENTICATED
    assert await code(generate_request(), role="reader") == grpc.StatusCode.PERMISSION_DENIED


async def test_grpc_generate_takes_a_plain_prompt_and_a_seed(app, infra) -> None:  # type: ignore[no-untyped-def]
    async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
        stub = gpb_grpc.GenerationServiceStub(channel)

        async def text(**params: Any) -> tuple[str, str]:
            responses = [r async for r in stub.Generate(generate_request(prompt="The bank", **params))]
            return "".join(r.text for r in responses), responses[-1].finish_reason
        first = await text(temperature=1.0, seed=5, max_tokens=3)
        assert first == await text(temperature=1.0, seed=5, max_tokens=3)
        assert first[1] == "length"


async def test_health_and_reflection_list_the_generation_service(app) -> None:  # type: ignore[no-untyped-def]
    async with rpc.channel(app.grpc_address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=GENERATION))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = [r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))]
    assert GENERATION in {s.name for s in answers[0].list_services_response.service}


async def test_a_full_queue_is_429_and_resource_exhausted(app, infra, oai) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    engine = app.llm.engine(LLM)
    saved, engine.max_queue = engine.max_queue, 0  # the real engine, told no request may wait
    try:
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as caught:
                await oai.chat.completions.create(model=LLM, messages=CHAT, max_tokens=2, stream=stream)
            assert caught.value.code == "rate_limit_exceeded" and "overloaded" in caught.value.message
        async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in gpb_grpc.GenerationServiceStub(channel).Generate(generate_request(max_tokens=2)):
                    pass
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        engine.max_queue = saved
