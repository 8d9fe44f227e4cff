"""The evaluator's LLM side on the session's broker, database and registry: golden sets pushed from a directory
on start and through the gRPC API (versioned by content, roles, errors), reviewed answers joined from
reviews.requested and reviews.completed in either order, and which registered LLM versions get an evaluation
(no application tag or no golden set: skipped; otherwise queued and completed exactly like a predictive one).
The evaluations that answer questions through inference are in tests/e2e/test_llm_loop.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from flywheel.common import rpc
from flywheel.common.kafka import new_producer, send_events, wait_assigned
from flywheel.common.topics import EVALUATIONS_COMPLETED
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.evaluator.main import EvaluatorApp
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import common_pb2, models_pb2, reviews_pb2
from tests import polling
from tests.finetuner_helpers import reviewed
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration
eventually = partial(polling.eventually, timeout=60.0)


def golden_yaml(application: str, reference: str = "Disputes are free of charge.") -> str:
    return f"""\
application: {application}
items:
  - id: dispute-fee
    kind: answerable
    question: Does a dispute cost anything?
    reference: {reference}
  - id: invest
    kind: refusal
    question: Which shares should I buy?
"""


@dataclass
class World:
    app: EvaluatorApp
    application: str
    address: str


@pytest.fixture(scope="module")
async def world(infra, registry_app, tmp_path_factory) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    application = f"assistant-{suffix}"
    golden_dir: Path = tmp_path_factory.mktemp("golden")
    (golden_dir / f"{application}.yaml").write_text(golden_yaml(application))
    (golden_dir / "broken.yaml").write_text("application: [")  # logged and skipped: the others still count
    app = EvaluatorApp(EvaluatorSettings(
        **shared_settings(infra), db_schema=f"evaluator_{suffix}", consumer_group=f"evaluator-{suffix}",
        registry_addr=registry_app.address, golden_dir=golden_dir, inference_addr="127.0.0.1:9",
        semantic_similarity=False, toxicity=False, generation_timeout=2.0, max_wait_seconds=1.0,
        label_poll_seconds=0.2, poll_interval=0.2))
    await app.start()
    await wait_assigned(app.consumer)
    try:
        yield World(app, application, app.address)
    finally:
        await app.stop()


async def test_golden_sets_are_versioned_by_content(world: World, infra) -> None:  # type: ignore[no-untyped-def]
    async with rpc.channel(world.address, auth=infra.tokens.auth("operator")) as channel:
        stub = pb_grpc.EvaluatorServiceStub(channel)
        got = (await stub.GetGoldenSet(pb.GetGoldenSetRequest(application=world.application))).golden_set
        assert (got.version, got.answerable_items, got.refusal_items) == (1, 1, 1)  # pushed from the directory
        assert got.created_by.startswith("flywheel/evaluator") and "Does a dispute cost" in got.yaml
        # The same content, formatted differently: no new version.
        same = golden_yaml(world.application).replace("items:", "# reformatted\nitems:")
        put = await stub.PutGoldenSet(pb.PutGoldenSetRequest(yaml=same))
        assert not put.created and put.golden_set.version == 1
        put = await stub.PutGoldenSet(pb.PutGoldenSetRequest(yaml=golden_yaml(world.application, "It is free.")))
        assert put.created and put.golden_set.version == 2 and put.golden_set.created_by == "operator"
        listed = await stub.ListGoldenSets(pb.ListGoldenSetsRequest(application=world.application))
        assert [g.version for g in listed.golden_sets] == [2, 1] and not listed.golden_sets[0].yaml
        newest = await stub.ListGoldenSets(pb.ListGoldenSetsRequest())
        assert [g.version for g in newest.golden_sets if g.application == world.application] == [2]
        first = await stub.GetGoldenSet(pb.GetGoldenSetRequest(application=world.application, version=1))
        assert "Disputes are free of charge." in first.golden_set.yaml
        for request, code, message in [
            (pb.PutGoldenSetRequest(yaml="items: []"), grpc.StatusCode.INVALID_ARGUMENT, "application"),
            (pb.PutGoldenSetRequest(yaml="a: ["), grpc.StatusCode.INVALID_ARGUMENT, "not valid YAML"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PutGoldenSet(request)
            assert err.value.code() == code and message in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetGoldenSet(pb.GetGoldenSetRequest(application="no-such-app"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with rpc.channel(world.address, auth=infra.tokens.auth("reader")) as channel:
        stub = pb_grpc.EvaluatorServiceStub(channel)
        assert (await stub.GetGoldenSet(pb.GetGoldenSetRequest(application=world.application))).golden_set.version
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutGoldenSet(pb.PutGoldenSetRequest(yaml=golden_yaml(world.application)))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_reviewed_answers_join_in_either_order(world: World, infra) -> None:  # type: ignore[no-untyped-def]
    decided = datetime.now(UTC) - timedelta(minutes=5)
    corrected = reviewed(world.application, "Does a dispute cost anything?", "Yes, $25.",
                         corrected="No, disputes are free.", decided_at=decided)
    approved = reviewed(world.application, "Can I freeze my card?", "Yes, in the app.",
                        decision=reviews_pb2.REVIEW_DECISION_APPROVED, decided_at=decided)
    rejected = reviewed(world.application, "What now?", "Bananas.", decision=reviews_pb2.REVIEW_DECISION_REJECTED)
    producer = new_producer(infra.kafka_bootstrap, client_id="tests-llm-eval")
    await producer.start()
    try:
        # The decision of the first arrives before its question.
        await send_events(producer, [corrected[1], corrected[0], *approved, *rejected])
    finally:
        await producer.stop()
    llm = world.app.llm
    assert llm is not None
    start = decided - timedelta(seconds=1)

    async def joined() -> bool:
        found = await llm.store.reviewed_answers(world.application, start, datetime.now(UTC), 10)
        return {(r.question, r.answer) for r in found} == {
            ("Does a dispute cost anything?", "No, disputes are free."), ("Can I freeze my card?", "Yes, in the app.")}
    await eventually(joined, what="reviewed answers joined")
    assert await llm.store.reviewed_answers(world.application, decided + timedelta(seconds=1), datetime.now(UTC),
                                            10) == []  # before the candidate's eval_start: held out of nothing


async def evaluations_of(world: World, model: str) -> list[Any]:
    async with world.app.db.connection() as conn:
        return await (await conn.execute("SELECT * FROM evaluations WHERE model_name = %s ORDER BY created_at",
                                         (model,))).fetchall()


async def test_which_llm_versions_are_evaluated(world: World, infra, registry) -> None:  # type: ignore[no-untyped-def]
    model = f"tiny-{uuid.uuid4().hex[:8]}"
    untagged = await registry_client.register(registry, model, b"a", kind=common_pb2.MODEL_KIND_LORA_ADAPTER)
    other = await registry_client.register(registry, model, b"b", kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                           tags={"application": "an-app-without-golden-set"})
    tagged = await registry_client.register(registry, model, b"c", kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
                                            tags={"application": world.application})
    # The tagged one is queued and, inference being unreachable here, completes with ERROR after the wait.
    records = await read_records(infra.kafka_bootstrap, EVALUATIONS_COMPLETED.name, until=lambda rs: any(
        models_pb2.EvaluationCompleted.FromString(r.value).model_name == model for r in rs), timeout=60, settle=1.0)
    done = [e for e in (models_pb2.EvaluationCompleted.FromString(r.value) for r in records) if e.model_name == model]
    assert [(e.candidate_version, e.verdict) for e in done] == [(tagged.version,
                                                                 models_pb2.EVALUATION_VERDICT_ERROR)]
    rows = await evaluations_of(world, model)
    assert [(r["candidate_version"], r["kind"]) for r in rows] == [(tagged.version, "llm")]
    assert "inference" in rows[0]["error"], rows[0]["error"]
    # The Evaluate RPC says why an untagged version cannot be judged.
    async with rpc.channel(world.address, auth=infra.tokens.auth("operator")) as channel:
        stub = pb_grpc.EvaluatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Evaluate(pb.EvaluateRequest(model_name=model, candidate_version=untagged.version))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "application" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Evaluate(pb.EvaluateRequest(model_name=model, candidate_version=other.version))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "golden set" in (err.value.details() or "")
