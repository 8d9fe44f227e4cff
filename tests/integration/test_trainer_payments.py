"""The trainer end to end on the payments demo: generated transactions go through Kafka into the real
feature store (Feast on PostgreSQL) and into the trainer's labels; a run builds a point-in-time training
set over gRPC, trains the demo's fraud spec, and registers a version that scores like it says it does."""

from __future__ import annotations

import asyncio
import json
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
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.events import Event
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.topics import RETRAIN_REQUESTS
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.predictive import metrics
from flywheel.predictive.scoring import load_model
from flywheel.proto.events.v1 import common_pb2, models_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from flywheel.trainer.config import TrainerSettings
from flywheel.trainer.main import TrainerApp
from tests import polling
from tests.kafka_helpers import consumed_through, end_offsets
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
END = START + timedelta(days=DAYS)
TRANSACTIONS_PER_DAY = 150
# Measured test-slice ROC AUC on `stable` with these sizes: about 0.93 (see services/trainer/README.md).
ROC_AUC_FLOOR = 0.8


@dataclass
class Demo:
    store: Any
    trainer: TrainerApp
    stub: pb_grpc.TrainerServiceStub
    registry: Any
    model: str
    transactions: list[Any]
    infra: Any
    producer: Any


eventually = partial(polling.eventually, timeout=90.0)


async def count(app: Any, query: str, *args: Any) -> int:
    async with app.db.connection() as conn:
        row = await (await conn.execute(query, args)).fetchone()
    return int(next(iter(row.values())))


@pytest.fixture(scope="module")
async def demo(infra, registry_app, registry, producer, tmp_path_factory) -> AsyncIterator[Demo]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    store = FeatureStoreApp(FeatureStoreSettings(
        **shared_settings(infra), db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
        repo=str(payments_demo.FEATURE_REPO)))
    await store.start()
    trainer: TrainerApp | None = None
    channel = None
    try:
        # The demo's fraud spec under a name of its own (the session's registry is shared).
        spec = yaml.safe_load(payments_demo.FRAUD_MODEL_SPEC.read_text())
        model = spec["name"] = f"fraud-{suffix}"
        specs: Path = tmp_path_factory.mktemp("payments-specs")
        (specs / f"{model}.yaml").write_text(yaml.safe_dump(spec))
        trainer = TrainerApp(TrainerSettings(
            **shared_settings(infra), db_schema=f"trainer_{suffix}", consumer_group=f"trainer-{suffix}",
            specs_dir=specs,
            featurestore_addr=store.address, registry_addr=registry_app.address, poll_interval=0.2))
        await trainer.start()
        await asyncio.gather(wait_assigned(store.consumer), wait_assigned(trainer.consumer))

        transactions = generate("stable", seed=7, start=START, days=DAYS, transactions_per_day=TRANSACTIONS_PER_DAY)
        events = all_events(transactions, labels_observed_before=END)
        await publish(events, infra.kafka_bootstrap)
        feature_rows = sum(1 for e in events if e.topic.name == "features.updates")
        labels = len(events) - feature_rows

        async def consumed() -> bool:
            stored = 0
            for view in ("transactions", "customer_stats", "merchant_stats"):
                # Only this test's days: the store reads features.updates from the start, other tests' too.
                stored += await count(store, f"SELECT count(*) FROM {view}_source WHERE event_timestamp >= %s"
                                      " AND event_timestamp < %s", START, START + timedelta(days=DAYS + 1))
            # Only this test's days: other tests of the session publish labels of their own.
            return stored == feature_rows and await count(
                trainer, "SELECT count(*) FROM labels WHERE event_time >= %s AND event_time < %s", START, END) == labels
        # Generous: ~15k events through two consumers; seconds on an idle machine, more on a busy one.
        await eventually(consumed, timeout=300, what="feature rows and labels consumed")

        channel = rpc.channel(trainer.address, default_timeout=30, auth=infra.tokens.auth("operator"))
        yield Demo(store, trainer, pb_grpc.TrainerServiceStub(channel), registry, model, transactions, infra, producer)
    finally:
        if channel is not None:
            await channel.close()
        if trainer is not None:
            await trainer.stop()
        await store.stop()


def start_request(model: str, start: datetime = START, end: datetime = END, **params: str) -> pb.StartRunRequest:
    request = pb.StartRunRequest(model_name=model, params=params)
    request.window_start.FromDatetime(start)
    request.window_end.FromDatetime(end)
    return request


async def finished(demo: Demo, run_id: str) -> pb.Run:
    updates = [u async for u in demo.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=300)]
    return updates[-1].run


async def historical_features(demo: Demo, transactions: list[Any]) -> dict[str, list[Any]]:
    """The fraud_model_v1 features of `transactions` at their event times, straight from the feature store."""
    client = FeatureStoreClient(demo.trainer.settings.featurestore_addr, timeout=120,
                                auth=demo.trainer.settings.client_auth())
    got = await client.historical("fraud_model_v1", [
        {"transaction_id": t.transaction_id, "customer_id": t.customer_id, "merchant_id": t.merchant_id}
        for t in transactions], [t.event_time for t in transactions])
    return {name: [row[i] for row in got.rows] for i, name in enumerate(got.names)}


async def test_training_on_the_payments_demo_registers_a_model_that_scores(demo: Demo, tmp_path: Path) -> None:
    started = await demo.stub.StartRun(start_request(demo.model, scenario="stable"))
    run = await finished(demo, started.run.run_id)
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    labelled = [t for t in demo.transactions if t.label_observed_at < END]
    assert run.train_rows + run.validation_rows + run.test_rows == len(labelled)
    print(f"\npayments demo (stable, {DAYS} days x {TRANSACTIONS_PER_DAY}/day): {len(labelled)} labelled rows, "
          f"epochs {len(run.epochs)}, test metrics "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(run.metrics.items())))
    assert run.metrics["roc_auc"] >= ROC_AUC_FLOOR
    assert run.metrics["pr_auc"] > run.metrics["positive_rate"]  # far better than chance

    mv = (await demo.registry.GetModelVersion(reg.GetModelVersionRequest(
        ref=reg.ModelVersionRef(model_name=demo.model, version=run.registered_version)))).model_version
    assert mv.lineage.training_run_id == run.run_id and mv.lineage.dataset_snapshot_id == run.dataset_snapshot_id
    assert list(mv.lineage.feature_names) == list(run.feature_names) and mv.lineage.feature_names
    assert mv.metrics["roc_auc"] == pytest.approx(run.metrics["roc_auc"]) and mv.tags["scenario"] == "stable"

    path = tmp_path / "fraud.tar.gz"
    versions = RegistryClient(demo.trainer.settings.registry_addr, auth=demo.trainer.settings.client_auth())
    path.write_bytes(await versions.download(demo.model, run.registered_version))
    model = load_model(path)

    # Scoring the latest slice again, with features fetched independently, reproduces the reported ROC AUC.
    test_slice = sorted(labelled, key=lambda t: (t.event_time, t.transaction_id))[-run.test_rows:]
    probabilities = model.predict_proba(await historical_features(demo, test_slice))
    auc = metrics.roc_auc([t.is_fraud for t in test_slice], probabilities)
    assert auc == pytest.approx(run.metrics["roc_auc"], abs=1e-6)
    assert model.profile["label_rate"] > 0 and model.profile["sample"]["rows"] == 2000


async def test_a_retrain_request_delivered_twice_starts_one_run(demo: Demo) -> None:
    request = models_pb2.RetrainRequested(
        request_id=f"rr-{uuid.uuid4().hex[:8]}", model_name=demo.model, kind=common_pb2.MODEL_KIND_PREDICTIVE,
        reason=models_pb2.RETRAIN_REASON_SCHEDULE, parameters={"epochs": "5"})
    request.window_start.FromDatetime(START + timedelta(days=5))
    request.window_end.FromDatetime(END)
    event = Event(RETRAIN_REQUESTS, demo.model, request, "tests/monitor")
    before = len((await demo.stub.ListRuns(pb.ListRunsRequest(model_name=demo.model))).runs)
    await send_events(demo.producer, [event, event])
    sent = await end_offsets(demo.infra.kafka_bootstrap, RETRAIN_REQUESTS.name)

    async def one_new_run() -> list[pb.Run]:
        runs = (await demo.stub.ListRuns(pb.ListRunsRequest(model_name=demo.model))).runs
        return [r for r in runs if r.retrain_request_id == request.request_id]
    (run,) = await eventually(one_new_run, what="the retrain run")
    run = await finished(demo, run.run_id)
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    assert run.reason == models_pb2.RETRAIN_REASON_SCHEDULE
    # The second delivery is handled (as a duplicate) once the trainer's group has committed past both.
    await consumed_through(demo.infra.kafka_bootstrap, demo.trainer.settings.consumer_group, RETRAIN_REQUESTS.name,
                           sent)
    assert len((await demo.stub.ListRuns(pb.ListRunsRequest(model_name=demo.model))).runs) == before + 1


async def test_bad_inputs_fail_clearly_and_register_nothing(demo: Demo, tmp_path: Path) -> None:
    specs = demo.trainer.settings.specs_dir
    assert specs is not None
    spec = yaml.safe_load((specs / f"{demo.model}.yaml").read_text())
    other = f"{demo.model}-missing-fs"
    (specs / f"{other}.yaml").write_text(yaml.safe_dump({**spec, "name": other,
                                                         "features": {"feature_service": "no_such_service"}}))
    run = await finished(demo, (await demo.stub.StartRun(start_request(other))).run.run_id)
    assert run.status == pb.RUN_STATUS_FAILED and "feature store" in run.failure_reason
    assert "no_such_service" in run.failure_reason

    before = END + timedelta(days=365)
    run = await finished(demo, (await demo.stub.StartRun(start_request(other, before, before + timedelta(days=7)))
                                ).run.run_id)
    assert run.status == pb.RUN_STATUS_FAILED and "no labelled rows" in run.failure_reason
    # The last day's labels are mostly not known by the end of the window: too few rows.
    run = await finished(demo, (await demo.stub.StartRun(start_request(other, END - timedelta(hours=12), END))
                                ).run.run_id)
    assert run.status == pb.RUN_STATUS_FAILED and "labelled rows" in run.failure_reason
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await demo.registry.ListModelVersions(reg.ListModelVersionsRequest(model_name=other))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_generated_features_are_served_online_and_payments_published(demo: Demo) -> None:
    """Generator -> features.updates -> the feature store's online store, read over gRPC; and the raw
    payments the bank scores land on its own topic, without labels."""
    from payments_demo.pipeline import TRANSACTIONS_TOPIC, feature_rows, publish_transactions

    from flywheel.proto.events.v1 import features_pb2
    from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs
    from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fs_grpc
    from tests.kafka_helpers import read_records

    latest: dict[str, dict] = {}
    for row in feature_rows(demo.transactions):
        if row.view == "customer_stats":
            latest[row.entity_keys["customer_id"]] = dict(row.values)
    customers = sorted(latest)[:20]
    async with rpc.channel(demo.store.address, auth=demo.infra.tokens.auth("reader")) as channel:
        response = await fs_grpc.FeatureStoreServiceStub(channel).GetOnlineFeatures(fs.GetOnlineFeaturesRequest(
            features=fs.FeatureSelection(features=fs.FeatureRefs(refs=["customer_stats:txn_count_24h",
                                                                       "customer_stats:avg_amount_30d"])),
            entity_rows=[fs.EntityRow(keys={"customer_id": features_pb2.FeatureValue(string_value=c)})
                         for c in customers]))
    assert list(response.feature_names) == ["customer_stats__txn_count_24h", "customer_stats__avg_amount_30d"]
    for customer, row in zip(customers, response.rows, strict=True):
        assert row.values[0].int64_value == latest[customer]["txn_count_24h"]
        assert row.values[1].double_value == pytest.approx(latest[customer]["avg_amount_30d"])

    payments = demo.transactions[:50]
    assert await publish_transactions(payments, demo.infra.kafka_bootstrap) == 50
    wanted = {t.transaction_id for t in payments}
    records = await read_records(demo.infra.kafka_bootstrap, TRANSACTIONS_TOPIC,
                                 until=lambda rs: wanted <= {r.key.decode() for r in rs})
    bodies = [json.loads(r.value) for r in records if r.key.decode() in wanted]
    assert {b["transaction_id"] for b in bodies} == wanted
    assert all("is_fraud" not in b and "label" not in b for b in bodies)
