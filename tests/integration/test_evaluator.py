"""The evaluator on real services: payments data through Kafka into a real feature store (Feast on
PostgreSQL) and the evaluator's own labels; models trained in-process by the trainer's pipeline and
registered in the session's registry; models.registered -> evaluations.completed -> the registry's
promotion decision."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import payments_demo
import pytest
import yaml
from payments_demo.generator import all_events, generate, publish

from flywheel.common import rpc
from flywheel.common.clients.featurestore import FeatureStoreClient
from flywheel.common.kafka import wait_assigned
from flywheel.common.topics import EVALUATIONS_COMPLETED, MODELS_PROMOTED, MODELS_REGISTERED
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.evaluator.main import EvaluatorApp
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.inference.testing import build_predictive_artifact
from flywheel.predictive.spec import parse_spec
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.trainer import pipeline
from flywheel.trainer.artifact import build_artifact
from flywheel.trainer.execution import holdout_start, training_frame
from flywheel.trainer.store import LabelRow
from tests import polling
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import fixture_spec, shared_settings

pytestmark = pytest.mark.integration

# Labels must be known before the evaluation starts (wall clock): the data ends 12 days ago, so every
# label (chargebacks come up to 10 days late) is known and the latest rows have their frauds. They come
# from the end_user source, which no other test uses: the evaluator reads the most recent labels of the
# whole topic, and other tests' rows have no features in this test's feature store.
DAYS = 14
START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS + 12)
LABELS_KNOWN = START + timedelta(days=DAYS + 11)
PER_DAY = 150
PASSED, FAILED, ERROR = (models_pb2.EVALUATION_VERDICT_PASSED, models_pb2.EVALUATION_VERDICT_FAILED,
                         models_pb2.EVALUATION_VERDICT_ERROR)


@dataclass
class World:
    infra: Any
    evaluator: EvaluatorApp
    stub: pb_grpc.EvaluatorServiceStub
    registry: Any
    specs: Path
    spec: dict[str, Any]
    good: bytes
    other_good: bytes
    holdout: str
    producer: Any


eventually = partial(polling.eventually, timeout=120.0)


async def scalar(app: Any, query: str, *args: Any) -> int:
    async with app.db.connection() as conn:
        row = await (await conn.execute(query, args)).fetchone()
    return int(next(iter(row.values())))


def train(spec: Any, frame: Any, seed: int) -> tuple[bytes, str]:
    """A real model of the spec (few epochs), packaged as the trainer does; and its holdout start."""
    seeded = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": seed, "epochs": 8})})
    trained = pipeline.train(frame, seeded)
    return build_artifact(trained, seeded, {}, run_id=f"test-seed-{seed}"), holdout_start(trained).isoformat()


@pytest.fixture(scope="module")
async def world(infra, registry_app, registry, producer, tmp_path_factory) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    store = FeatureStoreApp(FeatureStoreSettings(
        **shared_settings(infra), db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
        repo=str(payments_demo.FEATURE_REPO)))  # the test's data: payments from the demo's generator
    await store.start()
    app: EvaluatorApp | None = None
    channel = None
    try:
        spec = fixture_spec("fraud")  # its features are what the payments Feast repo serves as fraud_model_v1
        spec["label"] = {"source": "end_user", "type": "flag"}
        # Loose enough that two seeds of the same model pass against each other on ~300 rows.
        spec["gate"] = {"metric": "roc_auc", "tolerance": 0.1, "floor": 0.6}
        specs: Path = tmp_path_factory.mktemp("evaluator-specs")
        app = EvaluatorApp(EvaluatorSettings(
            **shared_settings(infra), db_schema=f"evaluator_{suffix}", consumer_group=f"evaluator-{suffix}",
            specs_dir=specs,
            featurestore_addr=store.address, registry_addr=registry_app.address, min_rows=100, min_positives=3,
            max_wait_seconds=2.0, label_poll_seconds=0.5, min_slice_rows=20, poll_interval=0.2))
        await app.start()
        await asyncio.gather(wait_assigned(store.consumer), wait_assigned(app.consumer))

        transactions = generate("stable", seed=11, start=START, days=DAYS, transactions_per_day=PER_DAY)
        events = all_events(transactions, labels_observed_before=LABELS_KNOWN)
        for event in events:
            if event.topic.name == "feedback.received":
                event.payload.source = predictions_pb2.FEEDBACK_SOURCE_END_USER
        await publish(events, infra.kafka_bootstrap)
        feature_rows = sum(1 for e in events if e.topic.name == "features.updates")
        labels = len(events) - feature_rows

        async def consumed() -> bool:
            stored = 0
            for view in ("transactions", "customer_stats", "merchant_stats"):
                # Only this test's days: the store reads features.updates from the start, other tests' too.
                stored += await scalar(store, f"SELECT count(*) FROM {view}_source WHERE event_timestamp >= %s"
                                       " AND event_timestamp < %s", START, START + timedelta(days=DAYS + 1))
            return stored == feature_rows and await scalar(
                # Only this test's days: other tests of the session publish labels of their own (e.g. at now).
                app, "SELECT count(*) FROM labels WHERE event_time >= %s AND event_time < %s", START,
                START + timedelta(days=DAYS)) == labels
        await eventually(consumed, timeout=300, what="feature rows and labels consumed")

        # Train two real models on the labelled rows, with features fetched point-in-time over gRPC.
        labelled = [t for t in transactions if t.label_observed_at < LABELS_KNOWN]
        rows = [LabelRow(t.transaction_id, {"transaction_id": t.transaction_id, "customer_id": t.customer_id,
                                            "merchant_id": t.merchant_id}, t.event_time, t.label_observed_at,
                         t.is_fraud) for t in labelled]
        parsed = parse_spec(spec)
        got = await FeatureStoreClient(store.address, timeout=120, auth=infra.tokens.auth("reader")).historical(
            parsed.features.feature_service, [dict(r.entity_keys) for r in rows], [r.event_time for r in rows])
        frame = training_frame(parsed, rows, got.names, got.rows)
        (good, holdout), (other_good, _) = await asyncio.to_thread(
            lambda: (train(parsed, frame, 7), train(parsed, frame, 8)))
        channel = rpc.channel(app.address, default_timeout=60, auth=infra.tokens.auth("operator"))
        yield World(infra, app, pb_grpc.EvaluatorServiceStub(channel), registry, specs, spec, good, other_good,
                    holdout, producer)
    finally:
        if channel is not None:
            await channel.close()
        if app is not None:
            await app.stop()
        await store.stop()


def new_model(world: World, **changes: Any) -> str:
    """A model spec of its own (the fixture fraud spec under a new name), so tests never share a model."""
    name = f"ev-fraud-{uuid.uuid4().hex[:8]}"
    (world.specs / f"{name}.yaml").write_text(yaml.safe_dump({**world.spec, **changes, "name": name}))
    return name


async def register(world: World, name: str, data: bytes, *, champion: bool = False, **spec: Any) -> int:
    tags = {"holdout_start": world.holdout, **spec.pop("tags", {})}
    mv = await registry_client.register(world.registry, name, data, framework="pytorch", tags=tags, **spec)
    if champion:
        await world.registry.SetAlias(reg.SetAliasRequest(model_name=name, alias="champion", version=mv.version))
    return mv.version


async def completed(world: World, name: str, version: int, timeout: float = 180,
                    evaluation_id: str = "") -> models_pb2.EvaluationCompleted:
    def found(records: list[Any]) -> list[models_pb2.EvaluationCompleted]:
        out = []
        for record in records:
            if record.key.decode() == name:
                event = models_pb2.EvaluationCompleted.FromString(record.value)
                if event.candidate_version == version and evaluation_id in ("", event.evaluation_id):
                    out.append(event)
        return out

    records = await read_records(world.infra.kafka_bootstrap, EVALUATIONS_COMPLETED.name,
                                 until=lambda rs: bool(found(rs)), timeout=timeout)
    events = found(records)
    assert events, f"no evaluations.completed for {name}:{version}"
    return events[0]


async def explain(world: World, event: models_pb2.EvaluationCompleted) -> str:
    """Why an evaluation ended as it did (for assertion messages)."""
    evaluation = (await world.stub.GetEvaluation(pb.GetEvaluationRequest(
        evaluation_id=event.evaluation_id))).evaluation
    return f"{evaluation.error} {[c.detail for c in evaluation.checks]}"


def constant_model(world: World, name: str) -> bytes:
    """A model that scores every payment 0.05: no better than chance."""
    spec = parse_spec({**world.spec, "name": name})
    return build_predictive_artifact(numeric_features=list(spec.numeric), hidden=(4,), name=name, constant=0.05,
                                     vocab={f: ["grocery"] for f in spec.categorical})


async def test_a_good_candidate_passes_with_its_lineage_and_a_report(world: World) -> None:
    name = new_model(world)
    champion = await register(world, name, world.good, champion=True)
    lineage = common_pb2.Lineage(parent_version=champion, training_run_id="run-42", drift_event_id="drift-7",
                                 retrain_request_id="rr-9", feature_names=["a__b"])
    candidate = await register(world, name, world.other_good, lineage=lineage)

    event = await completed(world, name, candidate)
    assert event.verdict == PASSED, await explain(world, event)
    assert event.baseline_version == champion and event.report_uri == f"evaluator://evaluations/{event.evaluation_id}"
    assert (event.lineage.training_run_id, event.lineage.drift_event_id, event.lineage.retrain_request_id,
            event.lineage.parent_version) == ("run-42", "drift-7", "rr-9", champion)
    assert list(event.lineage.eval_report_refs) == [event.report_uri]
    assert event.candidate_metrics["roc_auc"] >= 0.6 and "roc_auc" in event.baseline_metrics
    assert [c.name for c in event.checks] == ["roc_auc >= baseline - 0.1", "roc_auc >= 0.6"]
    assert all(c.passed for c in event.checks)

    evaluation = (await world.stub.GetEvaluation(pb.GetEvaluationRequest(
        evaluation_id=event.evaluation_id))).evaluation
    assert evaluation.rows == int(event.candidate_metrics["rows"]) >= 100
    assert evaluation.requested_by == "flywheel/registry"  # queued by the registry's models.registered
    assert evaluation.data_start.ToDatetime(UTC) >= datetime.fromisoformat(world.holdout)
    assert len(evaluation.candidate_calibration) == len(evaluation.baseline_calibration) == 10
    assert sum(b.rows for b in evaluation.candidate_calibration) == evaluation.rows
    assert evaluation.slices and {s.feature for s in evaluation.slices} == {"transactions__merchant_category"}
    assert all(s.rows >= 20 and s.candidate and s.baseline for s in evaluation.slices)
    # The registry heard about it: the report is in the candidate's lineage, the champion did not move (manual).
    async def recorded() -> bool:
        mv = (await world.registry.GetModelVersion(reg.GetModelVersionRequest(
            ref=reg.ModelVersionRef(model_name=name, version=candidate)))).model_version
        return event.report_uri in mv.lineage.eval_report_refs
    await eventually(recorded, what="the report ref in the registry's lineage")
    champ = await world.registry.GetModelVersion(reg.GetModelVersionRequest(
        ref=reg.ModelVersionRef(model_name=name, alias="champion")))
    assert champ.model_version.version == champion

    # Replaying the very same models.registered record queues nothing new.
    records = await read_records(world.infra.kafka_bootstrap, MODELS_REGISTERED.name, until=lambda rs: any(
        r.key.decode() == name and models_pb2.ModelRegistered.FromString(r.value).model.version == candidate
        for r in rs))
    original = next(r for r in records if r.key.decode() == name
                    and models_pb2.ModelRegistered.FromString(r.value).model.version == candidate)
    for _ in range(2):
        await world.producer.send_and_wait(MODELS_REGISTERED.name, original.value, key=original.key,
                                           headers=list(original.headers))
    # A poison record behind them (same key, same partition): once it is dead-lettered, the replays were handled.
    marker = f"after-replay-{uuid.uuid4().hex[:6]}".encode()
    await world.producer.send_and_wait(MODELS_REGISTERED.name, b"\xff not protobuf", key=name.encode(),
                                       headers=[("ce_id", marker), ("ce_type", b"x"), ("ce_source", b"tests")])
    await read_records(world.infra.kafka_bootstrap, MODELS_REGISTERED.dlq, until=lambda rs: any(
        dict(r.headers).get("ce_id") == marker for r in rs))
    listed = (await world.stub.ListEvaluations(pb.ListEvaluationsRequest(model_name=name))).evaluations
    assert [e.candidate_version for e in listed].count(candidate) == 1


async def test_a_worse_candidate_fails_and_the_champion_stays(world: World) -> None:
    name = new_model(world)
    champion = await register(world, name, world.good, champion=True)
    await world.registry.SetPromotionPolicy(reg.SetPromotionPolicyRequest(
        model_name=name, mode=reg.PROMOTION_MODE_AUTOMATIC))
    worse = await register(world, name, constant_model(world, name))
    event = await completed(world, name, worse)
    assert event.verdict == FAILED, await explain(world, event)
    assert event.baseline_version == champion
    assert event.candidate_metrics["roc_auc"] == pytest.approx(0.5)
    failed = [c for c in event.checks if not c.passed]
    assert {c.name for c in failed} == {"roc_auc >= baseline - 0.1", "roc_auc >= 0.6"}
    assert "worse than the baseline" in failed[0].detail

    async def decided() -> bool:
        lineage = await world.registry.GetLineage(reg.GetLineageRequest(
            ref=reg.ModelVersionRef(model_name=name, version=worse)))
        return any(e.evaluation_id == event.evaluation_id for e in lineage.evaluations)
    await eventually(decided, what="the registry's decision")
    champ = await world.registry.GetModelVersion(reg.GetModelVersionRequest(
        ref=reg.ModelVersionRef(model_name=name, alias="champion")))
    assert champ.model_version.version == champion


async def test_a_good_candidate_with_automatic_policy_is_promoted(world: World) -> None:
    name = new_model(world)
    champion = await register(world, name, world.good, champion=True)
    await world.registry.SetPromotionPolicy(reg.SetPromotionPolicyRequest(
        model_name=name, mode=reg.PROMOTION_MODE_AUTOMATIC))
    candidate = await register(world, name, world.other_good)
    event = await completed(world, name, candidate)
    assert event.verdict == PASSED, await explain(world, event)
    assert event.baseline_version == champion

    def promoted(records: list[Any]) -> list[models_pb2.ModelPromoted]:
        return [p for p in (models_pb2.ModelPromoted.FromString(r.value) for r in records if r.key.decode() == name)
                if p.alias == "champion" and p.version == candidate]
    records = await read_records(world.infra.kafka_bootstrap, MODELS_PROMOTED.name,
                                 until=lambda rs: bool(promoted(rs)))
    (move,) = promoted(records)
    assert move.evaluation_id == event.evaluation_id and move.previous_version == champion
    assert move.reason == models_pb2.PROMOTION_REASON_EVALUATION


async def test_without_enough_labels_the_verdict_is_error(world: World) -> None:
    # Reviewer labels: none exist, so the evaluation waits max_wait_seconds and gives up.
    name = new_model(world, label={"source": "reviewer", "type": "flag"})
    await register(world, name, world.good, champion=True)
    candidate = await register(world, name, world.other_good)
    event = await completed(world, name, candidate)
    assert event.verdict == ERROR and not event.checks
    evaluation = (await world.stub.GetEvaluation(pb.GetEvaluationRequest(
        evaluation_id=event.evaluation_id))).evaluation
    assert "not enough labelled data" in evaluation.error and "min_rows" in evaluation.error
    assert "gave up after waiting" in evaluation.error and evaluation.rows == 0


async def test_the_evaluate_rpc(world: World) -> None:
    name = new_model(world)
    champion = await register(world, name, world.good, champion=True)
    worse = await register(world, name, constant_model(world, name))
    response = await world.stub.Evaluate(pb.EvaluateRequest(model_name=name, candidate_version=champion,
                                                            baseline_version=worse))
    evaluation = response.evaluation
    assert evaluation.verdict == PASSED, f"{evaluation.error} {[c.detail for c in evaluation.checks]}"
    assert evaluation.baseline_version == worse
    assert evaluation.requested_by == "operator"  # the principal of the caller's token
    assert evaluation.candidate_metrics["roc_auc"] > evaluation.baseline_metrics["roc_auc"]
    assert evaluation.completed_at.seconds > 0 and evaluation.report_uri.endswith(evaluation.evaluation_id)
    got = await world.stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=evaluation.evaluation_id))
    assert got.evaluation == evaluation

    # Paging: newest first, every evaluation once.
    await eventually(lambda: _count(world, name, 3), what="three evaluations of the model")
    first = await world.stub.ListEvaluations(pb.ListEvaluationsRequest(model_name=name, page_size=2))
    second = await world.stub.ListEvaluations(pb.ListEvaluationsRequest(model_name=name, page_size=2,
                                                                        page_token=first.next_page_token))
    ids = [e.evaluation_id for e in [*first.evaluations, *second.evaluations]]
    assert len(ids) == len(set(ids)) == 3 and first.next_page_token and not second.next_page_token

    for request, code, text in (
            (pb.EvaluateRequest(model_name=name, candidate_version=99), grpc.StatusCode.NOT_FOUND, "99"),
            (pb.EvaluateRequest(model_name="no-such-model", candidate_version=1), grpc.StatusCode.NOT_FOUND,
             "no-such-model"),
            (pb.EvaluateRequest(model_name=name, candidate_version=1, baseline_version=77),
             grpc.StatusCode.NOT_FOUND, "77"),
            (pb.EvaluateRequest(model_name=name), grpc.StatusCode.INVALID_ARGUMENT, "candidate_version"),
            (pb.EvaluateRequest(candidate_version=1), grpc.StatusCode.INVALID_ARGUMENT, "model_name")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await world.stub.Evaluate(request)
        assert error.value.code() == code and text in (error.value.details() or ""), request
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await world.stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await world.stub.ListEvaluations(pb.ListEvaluationsRequest(page_token="garbage"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _count(world: World, name: str, n: int) -> bool:
    listed = await world.stub.ListEvaluations(pb.ListEvaluationsRequest(model_name=name))
    return len([e for e in listed.evaluations if e.completed_at.seconds]) >= n


async def test_a_poison_registration_is_dead_lettered(world: World) -> None:
    from flywheel.common.events import Event
    from flywheel.common.kafka import send_events

    bad = models_pb2.ModelRegistered(kind=common_pb2.MODEL_KIND_PREDICTIVE)  # names no version
    event = Event(MODELS_REGISTERED, "nobody", bad, "tests")
    await send_events(world.producer, [event])
    records = await read_records(world.infra.kafka_bootstrap, MODELS_REGISTERED.dlq, until=lambda rs: any(
        dict(r.headers).get("ce_id") == event.id.encode() for r in rs))
    dead = next(r for r in records if dict(r.headers).get("ce_id") == event.id.encode())
    assert b"names no version" in dict(dead.headers)["dlq_error"]


async def test_an_evaluation_interrupted_by_a_crash_is_completed_once_after_a_restart(world: World) -> None:
    name = f"ev-fraud-{uuid.uuid4().hex[:8]}"  # no spec yet: the running evaluator skips its registrations
    champion = await register(world, name, world.good, champion=True)
    candidate = await register(world, name, world.other_good)
    (world.specs / f"{name}.yaml").write_text(yaml.safe_dump({**world.spec, "name": name}))
    evaluation_id = str(uuid.uuid4())
    async with world.evaluator.db.connection() as conn:  # what a crash mid-evaluation leaves behind
        await conn.execute(
            "INSERT INTO evaluations (id, model_name, candidate_version, trigger_event_id, status, attempts,"
            " started_at) VALUES (%s, %s, %s, %s, 'running', 1, now())",
            (evaluation_id, name, candidate, f"ev-{evaluation_id}"))
    # Another process on the same schema, with its own consumer group: reading models.registered from the start
    # with the spec now there, it also queues fresh evaluations of both versions (the first group skipped them), which
    # may complete first; the interrupted one is what this test follows.
    group = f"{world.evaluator.settings.consumer_group}-2"
    restarted = EvaluatorApp(world.evaluator.settings.model_copy(update={"consumer_group": group}))
    await restarted.start()
    try:
        event = await completed(world, name, candidate, evaluation_id=evaluation_id)
    finally:
        await restarted.stop()
    assert event.evaluation_id == evaluation_id and event.verdict == PASSED and event.baseline_version == champion
    row = await world.evaluator.evaluator.get(evaluation_id)
    assert row.status == "completed" and row.attempts == 2
    records = await read_records(world.infra.kafka_bootstrap, EVALUATIONS_COMPLETED.name, until=lambda rs: False,
                                 timeout=3)
    assert sum(1 for r in records if models_pb2.EvaluationCompleted.FromString(r.value).evaluation_id
               == evaluation_id) == 1
