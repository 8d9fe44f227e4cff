"""The trainer on the embedded broker and database, with the real registry and a small
in-test feature store (so these tests pin the trainer's behaviour, not Feast's):
runs that succeed and register, runs that fail with a clear reason and register nothing,
coalescing, retrain requests delivered twice, restart recovery, paging and the CLI."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.common import rpc
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.events import Event
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.topics import FEEDBACK_RECEIVED, RETRAIN_REQUESTS
from flywheel.predictive.scoring import load_model
from flywheel.proto.events.v1 import common_pb2, features_pb2, models_pb2, predictions_pb2
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fs_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from flywheel.trainer.config import TrainerSettings
from flywheel.trainer.main import TrainerApp
from tests import polling
from tests.kafka_helpers import consumed_through, end_offsets, header, read_records
from tests.service_helpers import shared_settings
from tests.unit.test_trainer_pipeline import CATEGORY, NUMERIC, SPEC, synthetic

pytestmark = pytest.mark.integration

FEATURES = [*NUMERIC, CATEGORY]
SERVICE = "fraud_model_v1"
# A feature service whose merchant fraud rate is always null, and one that lacks it.
NULLS_SERVICE = "nulls_v1"
PARTIAL_SERVICE = "partial_v1"
# Each test gets its own 60-day stretch of event time, so their labels never mix.
_windows = itertools.count()


# ---------------------------------------------------------------- an in-test feature store

class FakeFeatureStore(fs_grpc.FeatureStoreServiceServicer):
    """GetHistoricalFeatures from a dict of transaction_id -> feature values, in request order."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}
        self.calls = 0

    def add(self, frame: pd.DataFrame) -> None:
        for record in frame[["transaction_id", *FEATURES]].itertuples(index=False):
            self.rows[record[0]] = list(record[1:])

    async def GetHistoricalFeatures(self, request: fs.GetHistoricalFeaturesRequest, context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[fs.GetHistoricalFeaturesResponse]:
        self.calls += 1
        service = request.features.feature_service
        if service not in (SERVICE, NULLS_SERVICE, PARTIAL_SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"feature service {service!r} does not exist")
        names = [f for f in FEATURES if not (service == PARTIAL_SERVICE and f == "merchant_stats__fraud_rate_30d")]
        page_size = request.page_size or 5000
        for start in range(0, len(request.entity_rows), page_size):
            page = fs.GetHistoricalFeaturesResponse(feature_names=names if start == 0 else [])
            for row in request.entity_rows[start:start + page_size]:
                page.entity_rows.add().CopyFrom(row)
                values = self.rows.get(row.keys["transaction_id"].string_value)
                vector = page.rows.add()
                for name in names:
                    value = None if values is None else values[FEATURES.index(name)]
                    if service == NULLS_SERVICE and name == "merchant_stats__fraud_rate_30d":
                        value = None
                    vector.values.append(_value(value))
                    vector.statuses.append(fs.FEATURE_STATUS_NOT_FOUND if value is None
                                           else fs.FEATURE_STATUS_PRESENT)
            yield page


def _value(value: Any) -> features_pb2.FeatureValue:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return features_pb2.FeatureValue()
    if isinstance(value, str):
        return features_pb2.FeatureValue(string_value=value)
    if isinstance(value, int | np.integer):
        return features_pb2.FeatureValue(int64_value=int(value))
    return features_pb2.FeatureValue(double_value=float(value))


# ---------------------------------------------------------------- fixtures

@dataclass
class Stack:
    app: TrainerApp
    stub: pb_grpc.TrainerServiceStub
    registry: Any
    features: FakeFeatureStore
    specs: Path
    infra: Any
    producer: Any
    channel: grpc.aio.Channel
    extra: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
async def stack(infra, registry_app, registry, producer, tmp_path_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    fake = FakeFeatureStore()
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(fs_grpc.add_FeatureStoreServiceServicer_to_server, fake, "flywheel.featurestore.v1.FeatureStoreService")
    await server.start()
    specs = tmp_path_factory.mktemp("specs")
    app = TrainerApp(trainer_settings(infra, specs, f"127.0.0.1:{server.port}", registry_app.address))
    await app.start()
    await wait_assigned(app.consumer)
    channel = rpc.channel(app.address, default_timeout=30, auth=infra.tokens.auth("operator"))
    try:
        yield Stack(app, pb_grpc.TrainerServiceStub(channel), registry, fake, specs, infra, producer, channel)
    finally:
        await channel.close()
        await app.stop()
        await server.stop()


def trainer_settings(infra, specs: Path, featurestore: str, registry: str, **overrides: Any) -> TrainerSettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        **shared_settings(infra), db_schema=f"trainer_{suffix}", consumer_group=f"trainer-{suffix}", specs_dir=specs,
        featurestore_addr=featurestore, registry_addr=registry, poll_interval=0.2)
    values.update(overrides)
    return TrainerSettings(**values)


def write_spec(stack: Stack, name: str, **changes: Any) -> str:
    spec = {**SPEC, "name": name, "training": {**SPEC["training"], "epochs": 8, "patience": 3},
            "model": {"type": "mlp", "hidden": [16, 8], "dropout": 0.1}, **changes}
    (stack.specs / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return name


def new_window() -> tuple[datetime, datetime]:
    start = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=60 * next(_windows))
    return start, start + timedelta(days=60)


def feedback(row: Any, observed_at: datetime, *, source: int = predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH,
             ) -> Event:
    message = predictions_pb2.FeedbackReceived(
        feedback_id=f"fb-{row.transaction_id}", request_id=row.transaction_id, entity_id=row.transaction_id,
        source=source, label=common_pb2.Label(flag=bool(row.label)),  # type: ignore[arg-type]
        entity_keys={"transaction_id": row.transaction_id, "customer_id": row.customer_id,
                     "merchant_id": row.merchant_id})
    message.event_time.FromDatetime(row.event_time.to_pydatetime())
    message.observed_at.FromDatetime(pd.Timestamp(observed_at).to_pydatetime())
    return Event(FEEDBACK_RECEIVED, row.transaction_id, message, "tests/trainer")


def window_of_transactions(stack: Stack, rows: int, *, late: int = 0, one_class: bool = False,
                           seed: int = 0) -> tuple[datetime, datetime, pd.DataFrame, list[Event]]:
    """`rows` transactions spread over a fresh window (the last `late` of them labelled only after the
    window end), their features registered in the feature store, and their label events (not sent)."""
    start, end = new_window()
    frame = synthetic(rows, seed=seed)
    prefix = uuid.uuid4().hex[:6]
    frame["transaction_id"] = [f"t-{prefix}-{i:05d}" for i in range(rows)]
    frame["event_time"] = pd.date_range(start, end - timedelta(minutes=1), periods=rows).round("s")
    frame["late"] = np.arange(rows) >= rows - late
    if one_class:
        frame["label"] = False
    stack.features.add(frame)
    events = [feedback(row, end + timedelta(hours=1) if row.late else row.event_time + timedelta(seconds=30))
              for row in frame.itertuples(index=False)]
    return start, end, frame, events


async def labelled_window(stack: Stack, rows: int = 1500, *, late: int = 0, one_class: bool = False,
                          seed: int = 0) -> tuple[datetime, datetime, pd.DataFrame]:
    """A fresh window of transactions (see `window_of_transactions`) whose labels are published and
    stored by the trainer. Returns the window and the transactions (column `late` marks the late ones)."""
    start, end, frame, events = window_of_transactions(stack, rows, late=late, one_class=one_class, seed=seed)
    await send_events(stack.producer, events)

    async def stored() -> bool:
        async with stack.app.db.connection() as conn:
            row = await (await conn.execute("SELECT count(*) AS n FROM labels WHERE event_time >= %s AND "
                                            "event_time < %s", (start, end))).fetchone()
        return row["n"] == rows  # type: ignore[index]
    await eventually(stored, what="labels stored")
    return start, end, frame


eventually = partial(polling.eventually, timeout=60.0)


def start_request(model: str, start: datetime, end: datetime, **params: str) -> pb.StartRunRequest:
    request = pb.StartRunRequest(model_name=model, params=params, reason=models_pb2.RETRAIN_REASON_MANUAL)
    request.window_start.FromDatetime(start)
    request.window_end.FromDatetime(end)
    return request


def retrain_request(request_id: str, model: str, start: datetime, end: datetime, *,
                    drift_event_id: str) -> models_pb2.RetrainRequested:
    """What the monitor sends: retrain `model` on [start, end) because of `drift_event_id`."""
    message = models_pb2.RetrainRequested(
        request_id=request_id, model_name=model, kind=common_pb2.MODEL_KIND_PREDICTIVE,
        reason=models_pb2.RETRAIN_REASON_DRIFT, drift_event_id=drift_event_id, parameters={"epochs": "4"})
    message.window_start.FromDatetime(start)
    message.window_end.FromDatetime(end)
    return message


async def watch(stack: Stack, run_id: str) -> list[pb.WatchRunResponse]:
    return [update async for update in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120)]


async def finished(stack: Stack, run_id: str) -> pb.Run:
    updates = await watch(stack, run_id)
    return updates[-1].run


async def versions(stack: Stack, model: str) -> list[reg.ModelVersion]:
    try:
        response = await stack.registry.ListModelVersions(reg.ListModelVersionsRequest(model_name=model))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return []
    return list(response.model_versions)


async def download(stack: Stack, model: str, version: int, tmp_path: Path) -> Path:
    path = tmp_path / f"{model}-{version}.tar.gz"
    path.write_bytes(await RegistryClient(stack.app.settings.registry_addr, auth=stack.app.settings.client_auth())
                     .download(model, version))
    return path


# ---------------------------------------------------------------- tests

async def test_a_run_trains_registers_and_reports(stack: Stack, tmp_path: Path, unique: str) -> None:
    model = write_spec(stack, f"fraud-{unique}")
    start, end, frame = await labelled_window(stack, 1540, late=40)

    started = await stack.stub.StartRun(start_request(model, start, end, scenario="synthetic", epochs="6"))
    run_id = started.run.run_id
    assert not started.coalesced and started.run.status in (pb.RUN_STATUS_QUEUED, pb.RUN_STATUS_RUNNING)
    joined = await stack.stub.StartRun(start_request(model, start, end))
    assert joined.coalesced and joined.run.run_id == run_id
    assert started.run.requested_by == "operator"  # the principal of the stack's (operator) token

    updates = await watch(stack, run_id)
    run = updates[-1].run
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    progress = [u.progress for u in updates]
    assert progress == sorted(progress) and progress[-1] == 1.0
    stages = [u.stage for u in updates]
    assert any(s.startswith("epoch ") for s in stages) and "registering" in stages and stages[-1] == "succeeded"

    # The 40 labels observed after the window end were not used.
    assert run.train_rows + run.validation_rows + run.test_rows == 1500
    assert (run.train_rows, run.validation_rows, run.test_rows) == (1050, 225, 225)
    assert 1 <= len(run.epochs) <= 6 and run.params["epochs"] == "6"
    assert run.metrics["roc_auc"] > 0.7 and run.metrics["rows"] == 225
    assert set(run.metrics) >= {"roc_auc", "pr_auc", "f1", "precision", "recall", "ece", "brier", "positive_rate"}
    assert run.feature_names == FEATURES and len(run.dataset_snapshot_id) == 64 and run.code_version
    assert run.registered_version == 1 and run.reason == models_pb2.RETRAIN_REASON_MANUAL
    assert (await stack.stub.GetRun(pb.GetRunRequest(run_id=run_id))).run == run

    mv = (await stack.registry.GetModelVersion(reg.GetModelVersionRequest(
        ref=reg.ModelVersionRef(model_name=model, version=1)))).model_version
    assert mv.kind == common_pb2.MODEL_KIND_PREDICTIVE and mv.framework == "pytorch"
    assert mv.lineage.training_run_id == run_id and mv.lineage.dataset_snapshot_id == run.dataset_snapshot_id
    assert list(mv.lineage.feature_names) == FEATURES and mv.lineage.parent_version == 0
    assert mv.lineage.code_version == run.code_version
    assert mv.metrics["roc_auc"] == pytest.approx(run.metrics["roc_auc"])
    assert mv.tags["scenario"] == "synthetic" and mv.tags["run_id"] == run_id
    assert mv.tags["window"] == f"{start.isoformat()}/{end.isoformat()}"
    assert start < datetime.fromisoformat(mv.tags["holdout_start"]) < end

    scoring = load_model(await download(stack, model, 1, tmp_path))
    assert scoring.metadata["run_id"] == run_id and scoring.feature_names == FEATURES
    probabilities = scoring.predict_proba({f: frame[f].tolist() for f in FEATURES})
    assert probabilities.shape == (1540,) and ((probabilities > 0) & (probabilities < 1)).all()
    assert scoring.profile["rows"] == 1050 and scoring.profile["sample"]["rows"] == 1050

    # With a champion, the next version names it as its parent.
    await stack.registry.SetAlias(reg.SetAliasRequest(model_name=model, alias="champion", version=1))
    second = await finished(stack, (await stack.stub.StartRun(start_request(model, start, end))).run.run_id)
    assert second.status == pb.RUN_STATUS_SUCCEEDED and second.registered_version == 2
    assert second.parent.version == 1 and second.dataset_snapshot_id == run.dataset_snapshot_id
    mv2 = (await stack.registry.GetModelVersion(reg.GetModelVersionRequest(
        ref=reg.ModelVersionRef(model_name=model, version=2)))).model_version
    assert mv2.lineage.parent_version == 1


async def test_start_run_refuses_what_it_can_check_at_once(stack: Stack, unique: str) -> None:
    model = write_spec(stack, f"checks-{unique}")
    start, end = new_window()
    cases = [
        (start_request(f"nope-{unique}", start, end), grpc.StatusCode.NOT_FOUND, f"no model spec 'nope-{unique}'"),
        (start_request(model, end, start), grpc.StatusCode.INVALID_ARGUMENT, "the window is empty"),
        (start_request(model, start, start), grpc.StatusCode.INVALID_ARGUMENT, "the window is empty"),
        (pb.StartRunRequest(model_name=model), grpc.StatusCode.INVALID_ARGUMENT, "window_start and window_end are"),
        (start_request(model, start, end, epoch="3"), grpc.StatusCode.INVALID_ARGUMENT, "unknown parameter 'epoch'"),
        (pb.StartRunRequest(), grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty"),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stack.stub.StartRun(request)
        assert error.value.code() == code and message in (error.value.details() or ""), error.value
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.GetRun(pb.GetRunRequest(run_id="missing"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await watch(stack, "missing")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "no run 'missing'" in (error.value.details() or "")
    assert (await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model))).runs == []


async def test_bad_data_fails_the_run_with_a_reason_and_registers_nothing(stack: Stack, unique: str) -> None:
    start, end, frame = await labelled_window(stack, 600, late=100, seed=1)
    first_late = frame.loc[frame["late"], "event_time"].min().to_pydatetime()
    small_start, small_end, _ = await labelled_window(stack, 120, seed=2)
    clean_start, clean_end, _ = await labelled_window(stack, 600, one_class=True, seed=3)
    empty_start, empty_end = new_window()
    cases = [
        ("empty", {}, (empty_start, empty_end), "no labelled rows: no ground_truth flag labels with event time in"),
        ("late", {}, (first_late, end), "(100 more became known only after the window end and cannot be used)"),
        ("small", {}, (small_start, small_end), "only 120 labelled rows"),
        ("oneclass", {}, (clean_start, clean_end), "only one class: all 600 labels are false"),
        ("reviewer", {"label": {"source": "reviewer"}}, (start, end), "no labelled rows: no reviewer flag labels"),
        ("unknownfs", {"features": {"feature_service": "does_not_exist"}}, (start, end),
         "feature store: feature service 'does_not_exist' does not exist"),
        ("nulls", {"features": {"feature_service": NULLS_SERVICE}}, (start, end),
         "merchant_stats__fraud_rate_30d have no values in the training window (all null)"),
        ("partial", {"features": {"feature_service": PARTIAL_SERVICE}}, (start, end),
         f"the feature service '{PARTIAL_SERVICE}' does not provide merchant_stats__fraud_rate_30d"),
    ]
    run_ids = {}
    for name, changes, (a, b), _ in cases:
        model = write_spec(stack, f"bad-{name}-{unique}", **changes)
        run_ids[name] = (model, (await stack.stub.StartRun(start_request(model, a, b))).run.run_id)
    for name, _, _, reason in cases:
        model, run_id = run_ids[name]
        run = await finished(stack, run_id)
        assert run.status == pb.RUN_STATUS_FAILED, (name, run)
        assert reason in run.failure_reason, (name, run.failure_reason)
        assert run.registered_version == 0 and run.finished_at.seconds > 0
        assert await versions(stack, model) == [], name


async def test_a_retrain_request_delivered_twice_starts_one_run(stack: Stack, unique: str) -> None:
    model = write_spec(stack, f"retrain-{unique}")
    start, end, _ = await labelled_window(stack, 1200, seed=4)

    def request(request_id: str, model_name: str = model) -> models_pb2.RetrainRequested:
        return retrain_request(request_id, model_name, start, end, drift_event_id=f"drift-{unique}")

    first = Event(RETRAIN_REQUESTS, model, request(f"rr-1-{unique}"), "tests/monitor")
    # The same event twice, the same request under another event id, and a second request meanwhile.
    same_request = Event(RETRAIN_REQUESTS, model, request(f"rr-1-{unique}"), "tests/monitor")
    second = Event(RETRAIN_REQUESTS, model, request(f"rr-2-{unique}"), "tests/monitor")
    await send_events(stack.producer, [first, first, same_request, second])
    sent = await end_offsets(stack.infra.kafka_bootstrap, RETRAIN_REQUESTS.name)

    async def linked() -> list[dict]:
        async with stack.app.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT request_id, run_id, coalesced FROM retrain_requests WHERE model_name = %s ORDER BY"
                " received_at", (model,))).fetchall()
        return rows if len(rows) == 2 else []
    requests = await eventually(linked, what="both retrain requests recorded")
    runs = (await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model))).runs
    assert len(runs) == 1
    run = await finished(stack, runs[0].run_id)
    assert [(r["request_id"], r["run_id"], r["coalesced"]) for r in requests] == [
        (f"rr-1-{unique}", run.run_id, False), (f"rr-2-{unique}", run.run_id, True)]
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    assert run.reason == models_pb2.RETRAIN_REASON_DRIFT and run.retrain_request_id == f"rr-1-{unique}"
    assert run.requested_by == "tests/monitor"  # a retrain request is asked for by the service that sent it
    assert len(run.epochs) <= 4
    mv = (await versions(stack, model))[0]
    assert mv.lineage.retrain_request_id == f"rr-1-{unique}" and mv.lineage.drift_event_id == f"drift-{unique}"
    # Nothing else starts later: the trainer's group has handled every request sent above.
    await consumed_through(stack.infra.kafka_bootstrap, stack.app.settings.consumer_group, RETRAIN_REQUESTS.name, sent)
    assert len((await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model))).runs) == 1

    # A request for a model without a spec cannot ever work: dead-lettered, the consumer goes on.
    poison = Event(RETRAIN_REQUESTS, f"ghost-{unique}", request(f"rr-3-{unique}", f"ghost-{unique}"), "tests/monitor")
    await send_events(stack.producer, [poison])
    records = await read_records(stack.infra.kafka_bootstrap, RETRAIN_REQUESTS.dlq,
                                 until=lambda rs: any(header(r, "ce_id") == poison.id for r in rs))
    (dead,) = [r for r in records if header(r, "ce_id") == poison.id]
    assert f"no model spec 'ghost-{unique}'" in header(dead, "dlq_error")
    # LLM requests are the fine-tuner's: ignored, not dead-lettered.
    llm = request(f"rr-4-{unique}", f"assistant-{unique}")
    llm.kind = common_pb2.MODEL_KIND_LLM
    llm_event = Event(RETRAIN_REQUESTS, f"assistant-{unique}", llm, "tests/monitor")
    await send_events(stack.producer, [llm_event])

    async def handled() -> bool:
        async with stack.app.db.connection() as conn:
            row = await (await conn.execute("SELECT 1 FROM processed_events WHERE event_id = %s",
                                            (llm_event.id,))).fetchone()
        return row is not None
    await eventually(handled, what="the LLM request handled")
    assert (await stack.stub.ListRuns(pb.ListRunsRequest(model_name=f"assistant-{unique}"))).runs == []


async def test_a_retrain_request_waits_for_labels_still_on_their_way(stack: Stack, unique: str) -> None:
    """The monitor asks for retraining once it has joined enough labels; the trainer's own copy of those
    labels (its feedback.received consumer) can lag behind. A run started by a retrain request waits for
    them (up to label_wait_seconds) instead of failing on an empty window."""
    assert stack.app.settings.label_wait_seconds >= 60
    start, end, frame, labels = window_of_transactions(stack, 1200, seed=6)
    # The spec needs every row labelled: the run must wait until the last label arrived, not start as soon as
    # the first few hundred of the batch are in (which made the row count below a race).
    model = write_spec(stack, f"waits-{unique}", min_rows=len(frame))
    request = retrain_request(f"rr-wait-{unique}", model, start, end, drift_event_id=f"drift-wait-{unique}")
    await send_events(stack.producer, [Event(RETRAIN_REQUESTS, model, request, "tests/monitor")])

    async def started() -> pb.Run | None:
        runs = (await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model))).runs
        return runs[0] if runs else None
    run = await eventually(started, what="the run started by the request")

    stages: list[str] = []
    async for update in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=180):
        waiting = update.stage.startswith("waiting for labels")
        if waiting and not any(stage.startswith("waiting for labels") for stage in stages):
            assert update.run.status == pb.RUN_STATUS_RUNNING and "no labelled rows" in update.stage
            await send_events(stack.producer, labels)  # the labels arrive while the run waits
        stages.append(update.stage)
        run = update.run
    assert any(stage.startswith("waiting for labels") for stage in stages), stages
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    assert run.train_rows + run.validation_rows + run.test_rows == len(frame)
    (version,) = await versions(stack, model)
    assert version.lineage.retrain_request_id == f"rr-wait-{unique}"


async def test_runs_left_running_by_a_crash_fail_on_restart(stack: Stack, unique: str) -> None:
    model = write_spec(stack, f"crash-{unique}")
    start, end = new_window()
    async with stack.app.db.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (id, model_name, status, window_start, window_end, started_at, stage) VALUES"
            " (%s, %s, %s, %s, %s, now(), 'epoch 3/40')", (f"crashed-{unique}", model, pb.RUN_STATUS_RUNNING,
                                                            start, end))
    settings = stack.app.settings.model_copy(update={"consumer_group": f"trainer-restart-{unique}"})
    restarted = TrainerApp(settings)
    await restarted.start()
    try:
        run = (await stack.stub.GetRun(pb.GetRunRequest(run_id=f"crashed-{unique}"))).run
        assert run.status == pb.RUN_STATUS_FAILED and run.failure_reason == "interrupted by a restart"
        # The model is free again: a new run can start.
        started = await stack.stub.StartRun(start_request(model, start, end))
        assert not started.coalesced
        assert (await finished(stack, started.run.run_id)).status == pb.RUN_STATUS_FAILED  # no labels there
    finally:
        await restarted.stop()


async def test_list_runs_newest_first_in_pages(stack: Stack, unique: str) -> None:
    model = write_spec(stack, f"pages-{unique}")
    ids = []
    for _ in range(3):
        start, end = new_window()
        run_id = (await stack.stub.StartRun(start_request(model, start, end))).run.run_id
        await finished(stack, run_id)
        ids.append(run_id)
    first = await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model, page_size=2))
    assert [r.run_id for r in first.runs] == ids[::-1][:2] and first.next_page_token
    rest = await stack.stub.ListRuns(pb.ListRunsRequest(model_name=model, page_size=2,
                                                        page_token=first.next_page_token))
    assert [r.run_id for r in rest.runs] == [ids[0]] and not rest.next_page_token
    everything = await stack.stub.ListRuns(pb.ListRunsRequest(page_size=500))
    assert set(ids) <= {r.run_id for r in everything.runs}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.ListRuns(pb.ListRunsRequest(page_token="garbage"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def flywheel_train(stack: Stack, *args: str) -> tuple[int, str]:
    """`flywheel train` as an operator runs it (FLYWHEEL_TOKEN: the session's operator token)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.common.cli", "train", "--address", stack.app.address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "FLYWHEEL_TOKEN": stack.infra.tokens.operator})
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_cli_trains_and_prints_metrics_and_version(stack: Stack, unique: str) -> None:
    model = write_spec(stack, f"cli-{unique}")
    start, end, _ = await labelled_window(stack, 900, seed=5)
    window = f"{start.isoformat()}/{end.isoformat()}"
    code, out = await flywheel_train(stack, "--model", model, "--window", window, "--param", "epochs=3")
    assert code == 0, out
    assert "roc_auc" in out and "pr_auc" in out and f"registered {model}:1" in out, out

    code, out = await flywheel_train(stack, "--model", model, "--window", "2031-01-01:2031-01-01")
    assert code == 2 and "is empty" in out, out
    code, out = await flywheel_train(stack, "--model", f"none-{unique}", "--window", "2031-01-01:2031-02-01")
    assert code == 1 and "NOT_FOUND" in out and "Traceback" not in out, out
    empty_start, _ = new_window()
    code, out = await flywheel_train(stack, "--model", model, "--window",
                                     f"{empty_start:%Y-%m-%d}:{empty_start + timedelta(days=1):%Y-%m-%d}")
    assert code == 1 and "failed" in out and "no labelled rows" in out, out
    code, out = await flywheel_train(stack, "--help")
    assert code == 0 and "--window" in out and "--param" in out, out
