"""Evaluation pins on gRPC Generate (the evaluator's LLM gate), through `GenerationClient` against a running inference:
a base LLM is champion, an adapter version of the same name (as the fine-tuner registers it) answers when pinned,
next to the champion and on its engine; a pinned prompt template version of an application is used instead of its
alias; pinned calls skip the response cache and are logged with arm EVALUATION; pinning takes the service role;
unknown versions are NOT_FOUND; at most llm_max_pinned versions stay pinned and an idle one is unloaded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from flywheel.common import rpc
from flywheel.common.clients.generation import GenerationClient
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.errors import FlywheelError, InvalidArgument, NotFound
from flywheel.common.prompt_templates import APPLICATION_TAG, register_prompt
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_tiny_adapter_artifact, build_tiny_llm_artifact
from flywheel.proto.events.v1 import common_pb2, predictions_pb2
from flywheel.proto.inference.v1 import generation_service_pb2 as gpb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as gpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
MODEL, PROMPT, APP = f"tiny-pin-{U}", f"pin-prompt-{U}", f"pin-app-{U}"
CHAT = [{"role": "system", "content": "You answer from the bank's documents."},
        {"role": "user", "content": "How do I freeze my card?"}]
TEMPLATE = "format: flywheel.prompt/v1\nsystem: {system}\ntemplate: '{{question}}'\nparameters: {{max_tokens: 12}}\n"
SYSTEM_V1, SYSTEM_V2 = "You are the bank's assistant.", "Answer in one short sentence, citing the fee schedule."
IDLE_S = 1.5
EVALUATION = predictions_pb2.PREDICTION_ARM_EVALUATION


@pytest.fixture(scope="module")
async def app(infra, registry, registry_app, tmp_path_factory) -> AsyncIterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The champion base v1, adapters v2 and v3 of the same name (lineage: base v1), a prompt with two versions and
    an application on both; inference with llm_max_pinned 1 and a short idle time."""
    root = tmp_path_factory.mktemp("pins")
    base = build_tiny_llm_artifact(root / "base", seed=3)
    v1 = await registry_client.register(registry, MODEL, base, kind=common_pb2.MODEL_KIND_LLM,
                                        framework="transformers")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=MODEL, alias="champion", version=v1.version))
    lineage = common_pb2.Lineage(base_model=common_pb2.ModelRef(name=MODEL, version=v1.version))
    adapters = [await registry_client.register(registry, MODEL, build_tiny_adapter_artifact(root / "base", root / n,
                                                                                             seed=seed),
                                               kind=common_pb2.MODEL_KIND_LORA_ADAPTER, framework="peft",
                                               lineage=lineage)
                for n, seed in (("a", 4), ("b", 5))]
    async with RegistryClient(registry_app.address, auth=infra.tokens.auth("admin")) as versions:
        p1, _ = await register_prompt(versions, PROMPT, TEMPLATE.format(system=SYSTEM_V1).encode())
        p2, new = await register_prompt(versions, PROMPT, TEMPLATE.format(system=SYSTEM_V2).encode(),
                                        application=APP)
    assert new and p2.tags[APPLICATION_TAG] == APP and p2.version == p1.version + 1
    await registry.SetAlias(rpb.SetAliasRequest(model_name=PROMPT, alias="champion", version=p1.version))
    settings = InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=registry_app.address, models=[MODEL],
        db_schema=f"inference_{U}", consumer_group=f"inference-{U}", retriever_addr="", guard_addr="",
        embedder_addr="", llm_cache_dir=root / "llm-cache", apps_refresh_s=0.2, llm_max_pinned=1,
        llm_pinned_idle_seconds=IDLE_S)
    inference = InferenceApp(settings)
    await inference.start()

    async def served() -> bool:
        assert inference.llm is not None
        return MODEL in {m.name for m in inference.llm.models()}
    await polling.eventually(served, what=f"{MODEL} served")
    async with httpx.AsyncClient(base_url=f"http://{inference.http_address}", timeout=60,
                                 headers={"authorization": f"Bearer {infra.tokens.operator}"}) as operator:
        response = await operator.put(f"/v1/applications/{APP}", json={
            "prompt": f"{PROMPT}@champion", "model": MODEL, "retrieval": {"collection": "unused"}})
        assert response.status_code == 201, response.text
    yield {"inference": inference, "base": v1.version, "adapters": [a.version for a in adapters],
           "prompts": (p1.version, p2.version)}
    await inference.stop()


def client(app: dict[str, Any], infra: Any, role: str = "service") -> GenerationClient:
    return GenerationClient(app["inference"].grpc_address, auth=infra.tokens.auth(role), timeout=120)


async def cache_header(app: dict[str, Any], infra: Any, model_version: int) -> str:
    async with rpc.channel(app["inference"].grpc_address, auth=infra.tokens.auth("service")) as channel:
        call = gpb_grpc.GenerationServiceStub(channel).Generate(gpb.GenerateRequest(
            model=MODEL, messages=gpb.Messages(messages=[gpb.ChatMessage(**m) for m in CHAT]),
            params=gpb.SamplingParams(temperature=0, max_tokens=8), model_version=model_version))
        _ = [r async for r in call]
        return dict(await call.initial_metadata())["x-flywheel-cache"]


async def logged(infra: Any, ids: dict[str, str]) -> dict[str, predictions_pb2.PredictionLogged]:
    """The predictions.logged events of these request ids, by the label `ids` gives each."""
    def mine(records: list[Any]) -> dict[str, predictions_pb2.PredictionLogged]:
        found = {}
        for record in records:
            if record.key is not None and record.key.decode() in ids:
                event = predictions_pb2.PredictionLogged()
                event.ParseFromString(record.value)
                found[ids[event.request_id]] = event
        return found
    return mine(await read_records(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name, timeout=60,
                                   until=lambda records: len(mine(records)) == len(ids)))


async def test_a_pinned_adapter_answers_next_to_the_champion_uncached_and_logged_as_evaluation(app, infra) -> None:  # type: ignore[no-untyped-def]
    inference, (candidate, _) = app["inference"], app["adapters"]
    async with client(app, infra) as generator:
        champion = await generator.generate(MODEL, CHAT, max_tokens=12, temperature=0)
        pinned = await generator.generate(MODEL, CHAT, max_tokens=12, temperature=0, model_version=candidate)
        assert inference.llm.engine(MODEL, candidate) is inference.llm.engine(MODEL)  # the adapter on the served base
        again = await generator.generate(MODEL, CHAT, max_tokens=12, temperature=0, model_version=candidate)
        unpinned = await generator.generate(MODEL, CHAT, max_tokens=12, temperature=0)
        same = await generator.generate(MODEL, CHAT, max_tokens=12, temperature=0, model_version=app["base"])
    assert (champion.model, champion.model_version) == (MODEL, app["base"])
    assert (pinned.model, pinned.model_version) == (MODEL, candidate) and pinned.text != champion.text
    assert again.text == pinned.text and unpinned.text == champion.text  # temperature 0: deterministic
    assert same.model_version == app["base"] and same.text == champion.text  # the champion's version: its route

    # The cache: an identical unpinned call is a hit the second time, a pinned one never is.
    assert [await cache_header(app, infra, 0) for _ in range(2)] == ["miss", "exact"]
    assert [await cache_header(app, infra, candidate) for _ in range(2)] == ["miss", "miss"]

    events = await logged(infra, {pinned.request_id: "pinned", again.request_id: "again",
                                  champion.request_id: "champion", same.request_id: "same"})
    assert events["pinned"].arm == events["again"].arm == events["same"].arm == EVALUATION
    assert events["champion"].arm == predictions_pb2.PREDICTION_ARM_CHAMPION
    assert (events["pinned"].model.name, events["pinned"].model.version) == (MODEL, candidate)
    assert events["pinned"].parameters["pinned_model_version"] == str(candidate)
    assert events["pinned"].llm.cache == "miss" and events["pinned"].llm.completion == pinned.text


async def test_a_pinned_prompt_version_is_used_by_the_application(app, infra) -> None:  # type: ignore[no-untyped-def]
    p1, p2 = app["prompts"]
    question = [{"role": "user", "content": "What does a card replacement cost?"}]
    async with client(app, infra) as generator:
        served = await generator.generate(APP, question, temperature=0)
        candidate = await generator.generate(APP, question, temperature=0, prompt_version=p2)
        both = await generator.generate(APP, question, temperature=0, prompt_version=p2,
                                        model_version=app["adapters"][0])
    assert (served.prompt_name, served.prompt_version) == (PROMPT, p1)
    assert (candidate.prompt_name, candidate.prompt_version) == (PROMPT, p2) and candidate.text != served.text
    assert candidate.model_version == app["base"]
    assert (both.prompt_version, both.model_version) == (p2, app["adapters"][0])
    events = await logged(infra, {candidate.request_id: "candidate", served.request_id: "served"})
    pinned = events["candidate"]
    assert pinned.arm == EVALUATION and pinned.parameters["pinned_prompt_version"] == str(p2)
    assert (pinned.llm.prompt_template.name, pinned.llm.prompt_template.version) == (PROMPT, p2)
    assert SYSTEM_V2 in pinned.llm.prompt and SYSTEM_V1 in events["served"].llm.prompt
    assert events["served"].arm == predictions_pb2.PREDICTION_ARM_CHAMPION


async def test_pins_are_checked_and_take_the_service_role(app, infra) -> None:  # type: ignore[no-untyped-def]
    candidate = app["adapters"][0]
    async with client(app, infra) as generator:
        with pytest.raises(NotFound, match=rf"{MODEL}.*no version 99"):
            await generator.generate(MODEL, CHAT, max_tokens=4, model_version=99)
        with pytest.raises(NotFound, match="no version 99"):
            await generator.generate(APP, CHAT, max_tokens=4, prompt_version=99)
        with pytest.raises(InvalidArgument, match="not an application"):
            await generator.generate(MODEL, CHAT, max_tokens=4, prompt_version=1)
        with pytest.raises(InvalidArgument, match="MODEL_KIND_PROMPT"):  # a prompt template is no LLM version
            await generator.generate(PROMPT, CHAT, max_tokens=4, model_version=1)
    async with client(app, infra, "predict") as predictor:
        assert (await predictor.generate(MODEL, CHAT, max_tokens=4, temperature=0)).model_version == app["base"]
        with pytest.raises(FlywheelError) as denied:
            await predictor.generate(MODEL, CHAT, max_tokens=4, model_version=candidate)
    cause = denied.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "service or operator role" in (cause.details() or "")


async def test_at_most_max_pinned_stay_and_an_idle_pin_is_unloaded(app, infra) -> None:  # type: ignore[no-untyped-def]
    llm = app["inference"].llm
    a, b = app["adapters"]
    engine = llm.engine(MODEL)
    async with client(app, infra) as generator:
        await asyncio.gather(*(generator.generate(MODEL, CHAT, max_tokens=4, model_version=a) for _ in range(3)))
        assert [(m.name, m.version) for m in llm.pinned()] == [(MODEL, a)]
        await generator.generate(MODEL, CHAT, max_tokens=4, model_version=b)
    assert [(m.name, m.version) for m in llm.pinned()] == [(MODEL, b)]  # llm_max_pinned 1: a made room

    async def unloaded() -> bool:
        return not llm.pinned() and not engine.adapters
    await polling.eventually(unloaded, timeout=60, what="the idle pin unloaded")
    assert llm.model(MODEL).version == app["base"] and llm.engine(MODEL) is engine  # the champion goes on
