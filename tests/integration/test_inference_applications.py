"""LLM applications in a running inference, on the demo bank's documents: the registry, the embedder with the real
all-MiniLM-L6-v2, the retriever (the policy documents ingested and indexed) and inference with a tiny LLM, all
in-process on the session's broker and database.

An application binds the demo's prompt template (a registry version of kind prompt, by alias), a model and the
documents' collection. Its answers cite the passages retrieval put into the prompt (so the tiny model's text does not
matter: the citations are decided by retrieval); questions no document supports get the template's refusal; a new
prompt version promoted changes the template used; an adapter promoted under load changes what the application
serves without a failed request; every generation (models and applications, both doors) lands on
`predictions.logged` with what the issue asks for; the operator API checks tokens and roles.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from payments_demo import rag
from payments_demo.assistant import PROMPT_FILE

from flywheel.common import rpc
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.clients.retriever import RetrieverClient
from flywheel.common.model_dirs import pack_dir
from flywheel.common.prompt_templates import parse_prompt_template, register_prompt
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.main import EmbedderApp
from flywheel.inference.config import InferenceSettings, TokenPrice
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_tiny_adapter, build_tiny_llm
from flywheel.proto.events.v1 import common_pb2, predictions_pb2
from flywheel.proto.inference.v1 import generation_service_pb2 as gpb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as gpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from flywheel.registry.main import RegistryApp
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.main import RetrieverApp
from tests import polling
from tests.fixtures_plugin import registry_settings
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration
eventually = partial(polling.eventually, timeout=300.0)

U = uuid.uuid4().hex[:8]
LLM, ADAPTER, PROMPT = f"tiny-rag-{U}", f"tiny-rag-lora-{U}", f"support-{U}"
APP, LORA_APP = f"assistant-{U}", f"assistant-lora-{U}"
PRICE = TokenPrice(prompt=0.5, completion=2.0)
TEMPLATE = PROMPT_FILE.read_bytes()
REFUSAL = parse_prompt_template(TEMPLATE).refusal
MIN_SIMILARITY = 0.25
# Held a little under what was measured (a question's document among the cited passages: 0.81 of the 118 with k 3; at
# most one refused: the fusion's ties can push the one supporting passage of a borderline question out of the top k),
# so a change that makes grounding worse fails here.
CITED_DOCUMENT_FLOOR = 0.78
REFUSED_CEILING = 2


@dataclass
class Stack:
    registry: RegistryApp
    stub: rpb_grpc.RegistryServiceStub
    versions: RegistryClient
    retriever: RetrieverApp
    root: Path


@pytest.fixture(scope="module")
async def stack(infra, tmp_path_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    """Registry, embedder (MiniLM, registered from its PyPI package) and retriever, the policy documents indexed."""
    root = tmp_path_factory.mktemp("apps")
    registry = RegistryApp(registry_settings(infra, max_artifact_bytes=512 * 1024 * 1024))
    await registry.start()
    model = f"minilm-{U}"
    embedder = EmbedderApp(EmbedderSettings(
        **shared_settings(infra), registry_addr=registry.address, db_schema=f"embedder_{U}",
        consumer_group=f"embedder-{U}", promotions_group=f"embedder-promotions-{U}", model=model, bootstrap=True,
        cache_dir=root / "embedder", initial_load_timeout=300.0))
    await embedder.start()
    retriever = RetrieverApp(RetrieverSettings(
        **shared_settings(infra), db_schema=f"retriever_{U}", consumer_group=f"retriever-{U}",
        embedding_model=model, embedder_addr=embedder.address))
    await retriever.start()
    async with RetrieverClient(retriever.address, auth=infra.tokens.auth("service")) as client:
        await rag.ingest_policies(client)

        async def indexed() -> bool:
            for document in rag.load_documents():
                found = await client.get_document(rag.COLLECTION, document.document_id, tenant=rag.TENANT)
                if found is None or not found.indexed:
                    return False
            return True
        await eventually(indexed, what="the policy documents indexed")
    channel = rpc.channel(registry.address, auth=infra.tokens.auth("admin"))
    versions = RegistryClient(registry.address, auth=infra.tokens.auth("admin"))
    yield Stack(registry, rpb_grpc.RegistryServiceStub(channel), versions, retriever, root)
    await versions.close()
    await channel.close()
    await retriever.stop()
    await embedder.stop()
    await registry.stop()


async def promote(stack: Stack, name: str, version: int) -> None:
    await stack.stub.SetAlias(rpb.SetAliasRequest(model_name=name, alias="champion", version=version))


@pytest.fixture(scope="module")
async def app(infra, stack) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    base = build_tiny_llm(stack.root / "base", seed=3, max_context=2048)  # room for a few passages
    mv = await registry_client.register(stack.stub, LLM, pack_dir(base), kind=common_pb2.MODEL_KIND_LLM,
                                        framework="transformers")
    await promote(stack, LLM, mv.version)
    prompt, new = await register_prompt(stack.versions, PROMPT, TEMPLATE, filename=PROMPT_FILE.name)
    assert new and prompt.kind == common_pb2.MODEL_KIND_PROMPT and prompt.tags["variables"] == "context,question"
    assert (await register_prompt(stack.versions, PROMPT, TEMPLATE))[0].version == prompt.version  # same bytes
    await promote(stack, PROMPT, prompt.version)
    settings = InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=stack.registry.address, models=[LLM, ADAPTER],
        db_schema=f"inference_{U}", consumer_group=f"inference-{U}", embedder_addr="", guard_addr="",
        retriever_addr=stack.retriever.address, llm_cache_dir=stack.root / "llm-cache", apps_refresh_s=0.2,
        llm_prices={LLM: PRICE})
    application = InferenceApp(settings)
    await application.start()

    async def served() -> bool:
        assert application.llm is not None
        return LLM in {m.name for m in application.llm.models()}
    await eventually(served, what=f"{LLM} served")
    async with http(application, infra.tokens.operator) as operator:
        response = await operator.put(f"/v1/applications/{APP}", json=spec(LLM))
        assert response.status_code == 201, response.text
    yield application
    await application.stop()


def spec(model: str, prompt: str = f"{PROMPT}@champion", **retrieval: Any) -> dict[str, Any]:
    return {"description": "the demo's support assistant on a tiny model", "prompt": prompt, "model": model,
            "retrieval": {"collection": rag.COLLECTION, "tenant": rag.TENANT, "k": 3,
                          "min_similarity": MIN_SIMILARITY, **retrieval},
            "guard_policy": "northwind-support"}


def http(app: InferenceApp, token: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://{app.http_address}", headers=headers, timeout=60)


def oai_client(app: InferenceApp, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=token, base_url=f"http://{app.http_address}/v1", max_retries=0, timeout=60)


@pytest.fixture
async def oai(app, infra) -> AsyncIterator[openai.AsyncOpenAI]:  # type: ignore[no-untyped-def]
    async with oai_client(app, infra.tokens.predict) as c:
        yield c


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


async def stream_answer(oai: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = [c async for c in await oai.chat.completions.create(stream=True, **kwargs)]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# ---------------------------------------------------------------------------------------- grounded answers


async def test_an_application_answers_from_the_documents_with_citations(oai) -> None:  # type: ignore[no-untyped-def]
    question = next(q for q in rag.load_questions() if q.id == "cards-01")  # lost card abroad: who to ring
    answer = await oai.chat.completions.create(model=APP, messages=ask(question.question), temperature=0,
                                               max_tokens=16)
    assert answer.model == APP and answer.choices[0].message.content
    extra = answer.model_extra or {}
    citations = extra["citations"]
    assert citations and [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    assert citations[0]["document_id"] == "cards" and citations[0]["title"] == "Northwind Bank Card Guide"
    assert citations[0]["source"] == "payments_demo/documents/cards.md" and citations[0]["chunk_id"]
    assert all(c["similarity"] >= MIN_SIMILARITY for c in citations)
    assert extra["grounding"]["supported"] and not extra["grounding"]["refused"]
    assert extra["application"]["prompt"] == PROMPT and extra["application"]["prompt_version"] == 1
    assert extra["application"]["model"] == LLM and answer.system_fingerprint == f"fw-{LLM}-v1"
    # The passage that answers it is in the prompt: one of the cited chunks holds the evidence.
    assert answer.usage is not None and answer.usage.prompt_tokens > 200

    # Streamed: the same greedy text, the citations on the chunk with the finish reason (and on the usage chunk).
    text, chunks = await stream_answer(oai, model=APP, messages=ask(question.question), temperature=0,
                                       max_tokens=16, stream_options={"include_usage": True})
    assert text == answer.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["citations"] == citations
    assert chunks[-1].usage is not None and chunks[-1].model_extra["citations"] == citations
    assert all("citations" not in (c.model_extra or {}) for c in chunks if c not in (finish[0], chunks[-1]))


async def test_the_customer_questions_cite_the_documents_that_answer_them(oai) -> None:  # type: ignore[no-untyped-def]
    questions = rag.load_questions()
    cited, refused = 0, []
    for question in questions:
        answer = await oai.chat.completions.create(model=APP, messages=ask(question.question), temperature=0,
                                                   max_tokens=1)
        extra = answer.model_extra or {}
        if extra["grounding"]["refused"]:
            refused.append(question.id)
        cited += question.document_id in {c["document_id"] for c in extra["citations"]}
    share = cited / len(questions)
    # The demo's policy refusals are not the grounding rule's to catch (the documents speak to them): measured here,
    # held by nothing (the guard's topic rails decline them).
    policy_refused, policy_cited = 0, 0
    for refusal in rag.load_refusals():
        answer = await oai.chat.completions.create(model=APP, messages=ask(refusal.prompt), max_tokens=1)
        extra = answer.model_extra or {}
        policy_refused += extra["grounding"]["refused"]
        policy_cited += rag.document_id(refusal.document) in {c["document_id"] for c in extra["citations"]}
    print(f"applications: {len(questions)} questions, their document cited for {share:.3f}, refused {refused}; "
          f"{len(rag.load_refusals())} policy refusals: {policy_refused} refused by grounding, the policy's document "
          f"cited for {policy_cited}")
    assert len(refused) <= REFUSED_CEILING, refused  # labelled questions have supporting passages
    assert share >= CITED_DOCUMENT_FLOOR, share


async def test_questions_no_document_supports_get_the_refusal(oai) -> None:  # type: ignore[no-untyped-def]
    best = []
    for question in rag.load_unsupported():
        answer = await oai.chat.completions.create(model=APP, messages=ask(question.question))
        extra = answer.model_extra or {}
        best.append(extra["grounding"]["best_similarity"])
        assert answer.choices[0].message.content == REFUSAL, question
        assert answer.choices[0].finish_reason == "stop" and extra["citations"] == []
        assert extra["grounding"]["refused"] and extra["grounding"]["best_similarity"] < MIN_SIMILARITY
        assert answer.usage is not None and answer.usage.total_tokens == 0  # the model did not run
    print(f"applications: {len(best)} unsupported questions, best similarity at most {max(best):.3f}")
    text, chunks = await stream_answer(oai, model=APP, messages=ask(rag.load_unsupported()[0].question),
                                       stream_options={"include_usage": True})
    assert text == REFUSAL and chunks[-1].model_extra["grounding"]["refused"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_a_conversation_keeps_its_turns_and_answers_the_last_one(oai, app) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "How much does it cost to use my debit card abroad?"}]
    answer = await oai.chat.completions.create(model=APP, messages=messages, temperature=0, max_tokens=4)
    assert not answer.model_extra["grounding"]["refused"] and answer.model_extra["citations"]
    call = await app.apps.answers.prepare(APP, messages, SamplingParams(), ())
    system, *turns, last = call.messages
    assert system["role"] == "system" and system["content"].startswith("You are Northwind Assist")
    assert system["content"].endswith("Answer in one sentence.")  # the client's system turn, after the template's
    assert turns == messages[1:3] and last["role"] == "user" and last["content"].endswith(messages[-1]["content"])
    assert "[1] " in last["content"] and call.params.temperature == 0.2 and call.params.max_tokens == 120
    # The last turn must be the user's; the template's defaults fill what the request does not set.
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        await oai.chat.completions.create(model=APP, messages=messages[:3])


# ---------------------------------------------------------------------------------------- promotions


async def test_a_prompt_promotion_changes_the_template_used(oai, stack) -> None:  # type: ignore[no-untyped-def]
    v2_refusal = f"Version two: that is not in our documents ({U})."
    template = yaml.safe_load(TEMPLATE)
    template["refusal"] = v2_refusal
    v2 = yaml.safe_dump(template, sort_keys=False).encode()
    assert parse_prompt_template(v2).refusal == v2_refusal
    version, new = await register_prompt(stack.versions, PROMPT, v2)
    assert new and version.version == 2
    unsupported = rag.load_unsupported()[1].question

    async def refusal() -> str:
        answer = await oai.chat.completions.create(model=APP, messages=ask(unsupported))
        return answer.choices[0].message.content or ""
    assert await refusal() == REFUSAL  # registered is not promoted
    await promote(stack, PROMPT, 2)

    async def uses_v2() -> bool:
        return await refusal() == v2_refusal
    await eventually(uses_v2, what="the promoted prompt version used")
    answer = await oai.chat.completions.create(model=APP, messages=ask("How do I freeze my card?"), max_tokens=2)
    assert answer.model_extra["application"]["prompt_version"] == 2
    await stack.stub.RollbackChampion(rpb.RollbackChampionRequest(model_name=PROMPT))

    async def back_to_v1() -> bool:
        return await refusal() == REFUSAL
    await eventually(back_to_v1, what="the rolled back prompt version used")


async def test_an_adapter_promoted_under_load_changes_what_the_application_serves(app, stack, infra) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    base_version = app.llm.model(LLM).version
    lineage = common_pb2.Lineage(base_model=common_pb2.ModelRef(name=LLM, version=base_version))
    a = build_tiny_adapter(stack.root / "base", stack.root / "lora-a", seed=4)
    b = build_tiny_adapter(stack.root / "base", stack.root / "lora-b", seed=5)
    va = await registry_client.register(stack.stub, ADAPTER, pack_dir(a), kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                        framework="peft", lineage=lineage)
    await promote(stack, ADAPTER, va.version)
    await eventually(lambda: _served(app, ADAPTER, va.version), what="adapter v1 served")
    async with http(app, infra.tokens.operator) as operator:
        assert (await operator.put(f"/v1/applications/{LORA_APP}", json=spec(ADAPTER))).status_code == 201
    vb = await registry_client.register(stack.stub, ADAPTER, pack_dir(b), kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                        framework="peft", lineage=lineage)
    fingerprints: list[str] = []
    done = asyncio.Event()

    async def traffic(oai: openai.AsyncOpenAI) -> None:
        while not done.is_set():
            answer = await oai.chat.completions.create(model=LORA_APP, messages=ask("How do I freeze my card?"),
                                                       temperature=0, max_tokens=8)
            assert answer.model_extra["citations"]
            fingerprints.append(answer.system_fingerprint or "")

    async with oai_client(app, infra.tokens.predict) as oai:
        workers = [asyncio.create_task(traffic(oai)) for _ in range(3)]
        await eventually(lambda: _true(len(fingerprints) >= 3), what="traffic on adapter v1")
        await promote(stack, ADAPTER, vb.version)
        await eventually(lambda: _served(app, ADAPTER, vb.version), what="adapter v2 served")
        count = len(fingerprints)
        await eventually(lambda: _true(len(fingerprints) >= count + 3), what="traffic on adapter v2")
        done.set()
        await asyncio.gather(*workers)  # raises if any request failed
    first, second = f"fw-{ADAPTER}-v{va.version}", f"fw-{ADAPTER}-v{vb.version}"
    assert set(fingerprints) == {first, second}
    assert fingerprints[-1] == second and fingerprints.index(second) > fingerprints.index(first)
    assert app.llm.engine(ADAPTER).stats.failed == 0


async def _served(app: InferenceApp, name: str, version: int) -> bool:
    assert app.llm is not None
    return any(m.name == name and m.version == version for m in app.llm.models())


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------------------------------- the gRPC door


def generate(model: str, question: str, **params: Any) -> gpb.GenerateRequest:
    return gpb.GenerateRequest(model=model, params=gpb.SamplingParams(**params), user="u-grpc",
                               messages=gpb.Messages(messages=[gpb.ChatMessage(role="user", content=question)]))


async def test_grpc_generate_answers_for_an_application(app, infra, oai) -> None:  # type: ignore[no-untyped-def]
    question = "What is the most I can pay contactless without a PIN?"
    rest = await oai.chat.completions.create(model=APP, messages=ask(question), temperature=0, max_tokens=12)
    async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
        stub = gpb_grpc.GenerationServiceStub(channel)
        responses = [r async for r in stub.Generate(generate(APP, question, temperature=0, max_tokens=12))]
        refused = [r async for r in stub.Generate(generate(APP, rag.load_unsupported()[3].question))]
        by_prompt = [r async for r in stub.Generate(gpb.GenerateRequest(model=APP, prompt=question,
                                                                        params=gpb.SamplingParams(max_tokens=2)))]
    assert "".join(r.text for r in responses) == rest.choices[0].message.content
    first, last = responses[0], responses[-1]
    assert first.request_id and (first.model, first.prompt.name, first.prompt.version) == (LLM, PROMPT, 1)
    assert [c.chunk_id for c in last.citations] == [c["chunk_id"] for c in rest.model_extra["citations"]]
    assert last.citations[0].document_id and not last.refused and last.finish_reason
    assert len(refused) == 1 and refused[0].refused and refused[0].text == REFUSAL and not refused[0].citations
    assert by_prompt[-1].citations  # a plain prompt is the question


# ---------------------------------------------------------------------------------------- generation events


async def test_every_generation_is_logged_with_what_it_was_built_from(app, infra, oai) -> None:  # type: ignore[no-untyped-def]
    assert app.llm is not None
    question = "Can I get my card fee back if I cancel within 30 days?"
    supported = await oai.chat.completions.create(model=APP, messages=ask(question), temperature=0, max_tokens=6,
                                                  user="customer-7")
    _, streamed = await stream_answer(oai, model=APP, messages=ask(question), temperature=0, max_tokens=6,
                                      stream_options={"include_usage": True})
    refusal = await oai.chat.completions.create(model=APP, messages=ask(rag.load_unsupported()[4].question))
    plain = await oai.chat.completions.create(model=LLM, messages=ask(question), temperature=0, max_tokens=5)
    async with rpc.channel(app.grpc_address, auth=infra.tokens.auth("predict")) as channel:
        grpc_answer = [r async for r in gpb_grpc.GenerationServiceStub(channel).Generate(
            generate(APP, question, temperature=0, max_tokens=6))]
    ids = {supported.id: "supported", streamed[0].id: "streamed", refusal.id: "refusal", plain.id: "plain",
           grpc_answer[0].request_id: "grpc"}

    def mine(records: list[Any]) -> dict[str, predictions_pb2.PredictionLogged]:
        found = {}
        for record in records:
            if record.key is not None and record.key.decode() in ids:
                event = predictions_pb2.PredictionLogged()
                event.ParseFromString(record.value)
                found[ids[event.request_id]] = event
        return found
    events = mine(await read_records(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name, timeout=60,
                                     until=lambda records: len(mine(records)) == len(ids)))
    assert set(events) == set(ids.values())

    e = events["supported"]
    x = e.llm
    extra = supported.model_extra or {}
    assert (e.model.name, e.model.version) == (LLM, 1) and e.latency_ms > 0 and e.sample_rate == 1.0
    assert x.application == APP and (x.prompt_template.name, x.prompt_template.version) == (PROMPT, 1)
    assert list(x.context_chunk_ids) == [c["chunk_id"] for c in extra["citations"]]
    assert list(x.context_chunk_scores) == pytest.approx([c["similarity"] for c in extra["citations"]], abs=1e-6)
    assert list(x.cited_titles) == list(dict.fromkeys(c["title"] for c in extra["citations"]))
    assert [(m.role, m.content) for m in x.messages] == [("user", question)]
    assert question in x.prompt and "Northwind Assist" in x.prompt and "[1] " in x.prompt  # the rendered template
    assert x.completion == supported.choices[0].message.content
    assert supported.usage is not None
    assert (x.prompt_tokens, x.completion_tokens) == (supported.usage.prompt_tokens, supported.usage.completion_tokens)
    assert x.time_to_first_token_ms > 0 and x.finish_reason == supported.choices[0].finish_reason
    assert x.cache == "miss" and not x.cache_hit and x.tenant == rag.TENANT
    assert x.cost == pytest.approx((x.prompt_tokens * PRICE.prompt + x.completion_tokens * PRICE.completion) / 1000)
    assert e.parameters["door"] == "openai" and e.parameters["stream"] == "false"
    assert e.parameters["user"] == "customer-7" and e.parameters["grounding"] == "supported"
    assert e.parameters["temperature"] == "0" and e.parameters["max_tokens"] == "6"

    assert events["streamed"].parameters["stream"] == "true"
    assert events["streamed"].llm.completion == x.completion and events["streamed"].llm.finish_reason

    r = events["refusal"]
    assert r.llm.completion == REFUSAL and r.llm.finish_reason == "refusal" and r.llm.cost == 0
    assert r.parameters["grounding"] == "no_supporting_passage" and not r.llm.context_chunk_ids
    assert float(r.parameters["best_similarity"]) < MIN_SIMILARITY

    p = events["plain"]
    assert p.model.name == LLM and not p.llm.application and not p.llm.prompt_template.name
    assert p.llm.completion == plain.choices[0].message.content and p.llm.messages[0].content == question
    assert "<|im_start|>user" in p.llm.prompt and p.llm.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]

    g = events["grpc"]
    assert g.parameters["door"] == "grpc" and g.llm.application == APP and g.parameters["user"] == "u-grpc"
    assert g.llm.completion == "".join(r.text for r in grpc_answer)


async def test_a_repeated_question_is_answered_from_the_cache_with_its_citations(app, infra) -> None:  # type: ignore[no-untyped-def]
    """The response cache sits in front of retrieval for applications: the same greedy question is an exact hit
    that answers the stored text with the stored citations; an application that retrieves otherwise misses."""
    body = {"model": APP, "messages": ask("How long do I have to dispute a card payment?"), "temperature": 0,
            "max_tokens": 6}
    async with http(app, infra.tokens.predict) as client:
        first = await client.post("/v1/chat/completions", json=body)
        second = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert first.status_code == second.status_code == 200, first.text
    assert first.headers["x-flywheel-cache"] == "miss" and second.headers["x-flywheel-cache"] == "exact"
    assert streamed.headers["x-flywheel-cache"] == "exact" and "data: [DONE]" in streamed.text
    a, b = first.json(), second.json()
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
    assert b["citations"] == a["citations"] and a["citations"] and b["grounding"] == a["grounding"]
    other = f"{APP}-k2"
    async with http(app, infra.tokens.operator) as operator:
        created = await operator.put(f"/v1/applications/{other}", json=spec(LLM, k=2))
        assert created.status_code == 201, created.text

    async def listed() -> bool:
        return app.apps is not None and app.apps.answers.serves(other)
    await eventually(listed, what=f"{other} seen by the replica")
    async with http(app, infra.tokens.predict) as client:
        elsewhere = await client.post("/v1/chat/completions", json={**body, "model": other})
    assert elsewhere.headers["x-flywheel-cache"] == "miss"  # other passages: never this answer


# ---------------------------------------------------------------------------------------- the operator API


async def test_applications_are_listed_as_models(oai) -> None:  # type: ignore[no-untyped-def]
    listed = {m.id: m for m in (await oai.models.list()).data}
    assert listed[APP].model_extra["kind"] == "application" and listed[APP].model_extra["model"] == LLM
    assert listed[APP].model_extra["prompt"] == f"{PROMPT}@champion"
    assert (await oai.models.retrieve(APP)).id == APP


async def test_application_crud_needs_an_operator(app, infra, oai) -> None:  # type: ignore[no-untyped-def]
    name = f"crud-{U}"
    async with http(app, infra.tokens.reader) as reader, http(app, infra.tokens.operator) as operator, \
            http(app, infra.tokens.predict) as predict, http(app, None) as nobody:
        for client, status in ((reader, 403), (predict, 403), (nobody, 401)):
            response = await client.put(f"/v1/applications/{name}", json=spec(LLM))
            assert response.status_code == status, response.text
            assert response.json()["error"]["type"] in ("permission_error", "invalid_request_error")
        assert (await nobody.get("/v1/applications")).status_code == 401
        assert (await predict.get("/v1/applications")).status_code == 403

        created = await operator.put(f"/v1/applications/{name}", json=spec(LLM))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["id"] == name and body["created_by"] == "operator" and body["revision"] > 0
        assert body["prompt"] == {"name": PROMPT, "alias": "champion"}
        replaced = await operator.put(f"/v1/applications/{name}", json={**spec(LLM), "description": "changed"})
        assert replaced.status_code == 200 and replaced.json()["revision"] > body["revision"]
        assert (await reader.get(f"/v1/applications/{name}")).json()["description"] == "changed"
        assert name in {a["id"] for a in (await reader.get("/v1/applications")).json()["data"]}
        answer = await oai.chat.completions.create(model=name, messages=ask("How do I freeze my card?"), max_tokens=2)
        assert answer.model == name

        missing = await reader.get(f"/v1/applications/no-such-{U}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "application_not_found" and missing.json()["error"]["message"]
        for bad, field in (({**spec(LLM), "prompt": f"no-such-prompt-{U}"}, "prompt"),
                           ({**spec(LLM), "model": f"no-such-model-{U}"}, "model"),
                           (spec(LLM, collection="no-such-collection"), "retrieval.collection"),
                           (spec(LLM, k=0), "retrieval.k"),
                           (spec(LLM, min_similarity=2), "retrieval.min_similarity"),
                           ({**spec(LLM), "prompt": f"{LLM}@champion"}, "prompt"),  # not a prompt template
                           ({**spec(LLM), "model": PROMPT}, "model"),  # not an LLM
                           ({"model": LLM}, "prompt")):
            response = await operator.put(f"/v1/applications/other-{U}", json=bad)
            assert response.status_code == 400, (bad, response.text)
            assert field in response.json()["error"]["message"], (field, response.json())
        taken = await operator.put(f"/v1/applications/{LLM}", json=spec(LLM))
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "application_name_taken"
        shared = await operator.put(f"/v1/applications/{PROMPT}", json=spec(LLM))  # its prompt's name: fine
        assert shared.status_code == 201, shared.text
        assert (await operator.delete(f"/v1/applications/{PROMPT}")).status_code == 200

        assert (await reader.delete(f"/v1/applications/{name}")).status_code == 403
        deleted = await operator.delete(f"/v1/applications/{name}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert (await operator.delete(f"/v1/applications/{name}")).status_code == 404
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.chat.completions.create(model=name, messages=ask("How do I freeze my card?"))
    assert caught.value.code == "model_not_found"


async def test_another_replica_sees_a_change_within_its_refresh(app, infra, stack) -> None:  # type: ignore[no-untyped-def]
    """A second inference on the same schema: an application created through the first answers on the second."""
    other = InferenceApp(InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=stack.registry.address, models=[LLM],
        db_schema=f"inference_{U}", consumer_group=f"inference-replica-{U}", embedder_addr="", guard_addr="",
        retriever_addr=stack.retriever.address, llm_cache_dir=stack.root / "llm-cache", apps_refresh_s=0.2))
    await other.start()
    try:
        name = f"replicated-{U}"
        async with http(app, infra.tokens.operator) as first, http(other, infra.tokens.reader) as second:
            assert (await first.put(f"/v1/applications/{name}", json=spec(LLM))).status_code == 201

            async def seen() -> bool:
                return (await second.get(f"/v1/applications/{name}")).status_code == 200
            await eventually(seen, what="the application on the other replica")
            assert (await first.delete(f"/v1/applications/{name}")).status_code == 200

            async def gone() -> bool:
                return (await second.get(f"/v1/applications/{name}")).status_code == 404
            await eventually(gone, what="the deletion on the other replica")
    finally:
        await other.stop()



# ---------------------------------------------------------------------------------------- the command line


async def test_the_cli_registers_prompts_and_manages_applications(app, infra, stack) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from flywheel.inference.cli import app as app_cli
    from flywheel.inference.cli import prompt as prompt_cli

    def run(group: Any, args: list[str], role: str = "operator") -> Any:
        env = {"FLYWHEEL_TOKEN": getattr(infra.tokens, role), "FLYWHEEL_REGISTRY_ADDR": stack.registry.address,
               "FLYWHEEL_INFERENCE_URL": f"http://{app.http_address}", "COLUMNS": "200"}
        return CliRunner().invoke(group, args, env=env, catch_exceptions=False)

    async def cli(group: Any, *args: str, role: str = "operator") -> Any:
        return await asyncio.to_thread(run, group, list(args), role)

    name, template = f"cli-prompt-{U}", str(PROMPT_FILE)
    assert "register" in (await cli(prompt_cli, "--help")).output
    assert "variables context, question" in (await cli(prompt_cli, "check", template)).output
    registered = await cli(prompt_cli, "register", template, "--name", name, "--alias", "champion")
    assert registered.exit_code == 0 and f"{name} v1 (registered) -> champion" in registered.output
    assert "already registered" in (await cli(prompt_cli, "register", template, "--name", name)).output
    shown = await cli(prompt_cli, "show", f"{name}@champion")
    assert shown.exit_code == 0 and "refusal" in shown.output and "Customer question: {question}" in shown.output

    application = f"cli-app-{U}"
    args = ["create", application, "--prompt", name, "--model", LLM, "--collection", rag.COLLECTION,
            "--tenant", rag.TENANT, "-k", "3", "--guard-policy", "northwind-support"]
    denied = await cli(app_cli, *args, role="reader")
    assert denied.exit_code == 1 and "role" in denied.output  # the server says which role is missing
    created = await cli(app_cli, *args)
    assert created.exit_code == 0 and f"application {application} created" in created.output, created.output
    again = await cli(app_cli, *args)
    assert again.exit_code == 1 and "--replace" in again.output
    assert (await cli(app_cli, *args, "--replace")).exit_code == 0
    assert application in (await cli(app_cli, "list", role="reader")).output
    shown = await cli(app_cli, "show", application, role="reader")
    assert shown.exit_code == 0 and '"guard_policy": "northwind-support"' in shown.output
    assert "deleted" in (await cli(app_cli, "delete", application)).output
    missing = await cli(app_cli, "show", application, role="reader")
    assert missing.exit_code == 1 and "does not exist" in missing.output
