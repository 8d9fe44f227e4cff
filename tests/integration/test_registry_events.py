"""The registry's events: outbox to Kafka with CloudEvents headers, evaluations consumed
idempotently, poison messages dead-lettered, and nothing lost across a broker outage."""

from __future__ import annotations

import uuid
from functools import partial

import grpc
import pytest
from opentelemetry import trace

from flywheel.common.events import Event
from flywheel.common.kafka import send_events
from flywheel.common.topics import EVALUATIONS_COMPLETED, MODELS_PROMOTED, MODELS_REGISTERED
from flywheel.proto.events.v1 import models_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from tests import polling
from tests.integration.registry_client import ref, register
from tests.kafka_helpers import header, read_records

pytestmark = pytest.mark.integration


def payloads(records, message_type, **match):  # type: ignore[no-untyped-def]
    out = []
    for record in records:
        message = message_type.FromString(record.value)
        if all(getattr(message, k) == v for k, v in match.items()):
            out.append((record, message))
    return out


async def test_register_emits_models_registered_with_cloudevents_headers(infra, registry, unique: str) -> None:
    name = f"events-{unique}"
    with trace.get_tracer("tests").start_as_current_span("client call") as span:
        mv = await register(registry, name, b"weights", framework="pytorch")
        trace_id = format(span.get_span_context().trace_id, "032x")

    def mine(rs):  # type: ignore[no-untyped-def]
        return [(r, e) for r, e in payloads(rs, models_pb2.ModelRegistered) if e.model.name == name]
    records = await read_records(infra.kafka_bootstrap, MODELS_REGISTERED.name, until=lambda rs: bool(mine(rs)),
                                 settle=1.0)
    [(record, event)] = mine(records)
    assert event.model.version == 1 and event.artifact_sha256 == mv.artifact.sha256 and event.framework == "pytorch"
    assert record.key == name.encode()
    assert header(record, "ce_type") == "flywheel.events.v1.ModelRegistered"
    assert header(record, "ce_source") == "flywheel/registry"
    assert header(record, "ce_specversion") == "1.0"
    assert header(record, "content-type") == "application/protobuf"
    assert uuid.UUID(header(record, "ce_id"))
    assert header(record, "ce_time").startswith("20")
    # The trace started by the gRPC caller continues in the event.
    assert header(record, "traceparent").split("-")[1] == trace_id


async def test_alias_move_emits_models_promoted(infra, registry, unique: str) -> None:
    """The actor of every move is the principal of the caller's token (here the session's `operator` and
    `admin` tokens), in the event and in the registry's alias history."""
    name = f"promo-{unique}"
    await register(registry, name, b"a")
    await register(registry, name, b"b")
    as_operator = (("authorization", f"Bearer {infra.tokens.operator}"),)
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1), metadata=as_operator)
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=2), metadata=as_operator)
    await registry.DeleteAlias(pb.DeleteAliasRequest(model_name=name, alias="champion"))  # the admin token

    def moves(rs):  # type: ignore[no-untyped-def]
        return [(e.alias, e.previous_version, e.version, e.actor)
                for _, e in payloads(rs, models_pb2.ModelPromoted, model_name=name)]
    records = await read_records(infra.kafka_bootstrap, MODELS_PROMOTED.name, until=lambda rs: len(moves(rs)) >= 4)
    # Moving the champion keeps the old one as `previous`, in the same transaction.
    assert moves(records) == [("champion", 0, 1, "operator"), ("previous", 0, 1, "operator"),
                              ("champion", 1, 2, "operator"), ("champion", 2, 0, "admin")]
    chain = await registry.GetLineage(pb.GetLineageRequest(ref=pb.ModelVersionRef(model_name=name, version=2)))
    assert [(c.alias, c.version, c.actor) for c in chain.alias_changes] == [("champion", 2, "operator"),
                                                                             ("champion", 0, "admin")]
    [(_, second)] = [(r, e) for r, e in payloads(records, models_pb2.ModelPromoted, model_name=name, version=2)]
    assert second.alias == "champion" and second.reason == models_pb2.PROMOTION_REASON_MANUAL


async def evaluation(producer, name: str, candidate: int, baseline: int, verdict: int,  # type: ignore[no-untyped-def]
                     event_id: str | None = None) -> Event:
    payload = models_pb2.EvaluationCompleted(
        evaluation_id=f"eval-{uuid.uuid4().hex[:8]}", model_name=name, candidate_version=candidate,
        baseline_version=baseline, verdict=verdict)  # type: ignore[arg-type]
    event = Event(EVALUATIONS_COMPLETED, name, payload, "tests/evaluator")
    if event_id:
        event.id = event_id
    await send_events(producer, [event])
    return event


async def decisions(app, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    async with app.db.connection() as conn:
        rows = await (await conn.execute("SELECT evaluation_id, decision FROM evaluations WHERE model_name = %s",
                                         (name,))).fetchall()
    return {r["evaluation_id"]: r["decision"] for r in rows}


eventually = partial(polling.eventually, timeout=30.0)


async def test_passing_evaluation_promotes_once_even_when_redelivered(
        infra, registry, registry_app, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    name = f"auto-{unique}"
    await register(registry, name, b"champion weights")
    await register(registry, name, b"candidate weights")
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    await registry.SetPromotionPolicy(pb.SetPromotionPolicyRequest(model_name=name, mode=pb.PROMOTION_MODE_AUTOMATIC))

    first = await evaluation(producer, name, 2, 1, models_pb2.EVALUATION_VERDICT_PASSED)
    await evaluation(producer, name, 2, 1, models_pb2.EVALUATION_VERDICT_PASSED, event_id=first.id)  # redelivery
    assert await eventually(lambda: decisions(registry_app, name)) == {first.payload.evaluation_id: "promoted"}

    champion = await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="champion")))
    previous = await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="previous")))
    assert (champion.model_version.version, previous.model_version.version) == (2, 1)
    assert f"evaluation:{first.payload.evaluation_id}" in champion.model_version.lineage.eval_report_refs

    def promotions(rs):  # type: ignore[no-untyped-def]
        return [(e.alias, e.previous_version, e.version) for _, e in
                payloads(rs, models_pb2.ModelPromoted, model_name=name, reason=models_pb2.PROMOTION_REASON_EVALUATION)]
    records = await read_records(infra.kafka_bootstrap, MODELS_PROMOTED.name, until=lambda rs: len(promotions(rs)) >= 2,
                                 settle=2.0)
    assert sorted(promotions(records)) == [("champion", 1, 2), ("previous", 0, 1)]
    [(_, promoted)] = [(r, e) for r, e in payloads(records, models_pb2.ModelPromoted, model_name=name,
                                                    reason=models_pb2.PROMOTION_REASON_EVALUATION) if e.version == 2]
    assert promoted.evaluation_id == first.payload.evaluation_id

    # The audit chain, from the registry: the evaluation it acted on and the alias moves, oldest first.
    chain = await registry.GetLineage(pb.GetLineageRequest(ref=ref(name, version=2)))
    assert [(e.evaluation_id, e.baseline_version, e.decision) for e in chain.evaluations] == [
        (first.payload.evaluation_id, 1, "promoted")]
    assert [(c.alias, c.previous_version, c.version, c.evaluation_id) for c in chain.alias_changes] == [
        ("champion", 1, 2, first.payload.evaluation_id)]
    old = await registry.GetLineage(pb.GetLineageRequest(ref=ref(name, version=1)))
    assert [(c.alias, c.previous_version, c.version) for c in old.alias_changes] == [
        ("champion", 0, 1), ("previous", 0, 1), ("champion", 1, 2)]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.GetLineage(pb.GetLineageRequest(ref=ref(name, version=9)))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in missing.value.details()


async def test_failed_stale_and_manual_evaluations_do_not_promote(
        registry, registry_app, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    name = f"gate-{unique}"
    for i in range(3):
        await register(registry, name, f"w{i}".encode())
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    manual = await evaluation(producer, name, 2, 1, models_pb2.EVALUATION_VERDICT_PASSED)
    decided = await eventually(lambda: decisions(registry_app, name))
    assert decided.get(manual.payload.evaluation_id) == "manual_policy"

    await registry.SetPromotionPolicy(pb.SetPromotionPolicyRequest(model_name=name, mode=pb.PROMOTION_MODE_AUTOMATIC))
    failed = await evaluation(producer, name, 2, 1, models_pb2.EVALUATION_VERDICT_FAILED)
    stale = await evaluation(producer, name, 3, 2, models_pb2.EVALUATION_VERDICT_PASSED)  # champion is 1, not 2
    seen = await eventually(lambda: _has(registry_app, name, 3))
    assert seen[failed.payload.evaluation_id] == "failed"
    assert seen[stale.payload.evaluation_id] == "stale_baseline"
    champion = await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="champion")))
    assert champion.model_version.version == 1


async def _has(app, name: str, count: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    found = await decisions(app, name)
    return found if len(found) >= count else {}


async def test_poison_message_goes_to_dlq_and_consumer_goes_on(
        infra, registry, registry_app, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    name = f"poison-{unique}"
    await register(registry, name, b"a")
    await register(registry, name, b"b")
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    await registry.SetPromotionPolicy(pb.SetPromotionPolicyRequest(model_name=name, mode=pb.PROMOTION_MODE_AUTOMATIC))

    marker = f"garbage-{unique}".encode()
    await producer.send_and_wait(EVALUATIONS_COMPLETED.name, value=marker, key=name.encode())  # no headers at all
    bad_type = Event(EVALUATIONS_COMPLETED, name, models_pb2.ModelRegistered(), "tests")  # wrong payload type
    bad_type.extra = {}
    key, _, headers = bad_type.encode()
    headers = [(k, b"flywheel.events.v1.ModelRegistered" if k == "ce_type" else v) for k, v in headers]
    await producer.send_and_wait(EVALUATIONS_COMPLETED.name, value=b"\x08\x01", key=key, headers=headers)
    unknown = await evaluation(producer, f"ghost-{unique}", 5, 0, models_pb2.EVALUATION_VERDICT_PASSED)
    good = await evaluation(producer, name, 2, 1, models_pb2.EVALUATION_VERDICT_PASSED)

    assert (await eventually(lambda: decisions(registry_app, name))) == {good.payload.evaluation_id: "promoted"}

    def dead(rs):  # type: ignore[no-untyped-def]  # dead-lettered by this registry (not another consumer)
        return [r for r in rs if r.key in (name.encode(), f"ghost-{unique}".encode())
                and header(r, "dlq_consumer") == registry_app.settings.consumer_group]
    records = await read_records(infra.kafka_bootstrap, EVALUATIONS_COMPLETED.dlq, until=lambda rs: len(dead(rs)) >= 3)
    errors = sorted(header(r, "dlq_error") for r in dead(records))
    assert len(errors) == 3
    assert any("missing CloudEvents header" in e for e in errors)
    assert any("does not belong on evaluations.completed" in e for e in errors)
    assert any("not registered" in e for e in errors)
    assert any(r.value == marker for r in dead(records))
    assert any(header(r, "ce_id") == unknown.id for r in dead(records))
