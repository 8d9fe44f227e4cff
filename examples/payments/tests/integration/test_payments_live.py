"""The live demo driver against real services: the feature store, trainer and inference in-process on the
session's broker and database (plus the session registry). Bootstrap publishes a tiny history, trains and
serves v1; a short live run is answered by v1; its labels land on feedback.received with the predictions'
request ids; the status page reports the serving version and accuracy points."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import payments_demo
import pytest
from payments_demo.live import Addresses, DemoDriver, DriverConfig
from payments_demo.status import StatusPage

from flywheel.common.topics import FEEDBACK_RECEIVED
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.proto.events.v1 import predictions_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.trainer.config import TrainerSettings
from flywheel.trainer.main import TrainerApp
from tests import polling
from tests.kafka_helpers import read_records
from tests.service_helpers import fraud_spec_dir, shared_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def services(infra, registry_app, tmp_path_factory) -> AsyncIterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    common = shared_settings(infra)
    model = f"fraud-live-{suffix}"
    specs = fraud_spec_dir(tmp_path_factory, model)
    started: list[Any] = []
    try:
        store = FeatureStoreApp(FeatureStoreSettings(
            **common, db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
            repo=str(payments_demo.FEATURE_REPO)))
        await store.start()
        started.append(store)
        trainer = TrainerApp(TrainerSettings(
            **common, db_schema=f"trainer_{suffix}", consumer_group=f"trainer-{suffix}", specs_dir=specs,
            featurestore_addr=store.address, registry_addr=registry_app.address, poll_interval=0.2))
        await trainer.start()
        started.append(trainer)
        inference = InferenceApp(InferenceSettings(
            **common, http_port=0, models=[model], registry_addr=registry_app.address,
            featurestore_addr=store.address, db_schema=f"inference_{suffix}", consumer_group=f"inference-{suffix}"))
        await inference.start()
        started.append(inference)
        yield {"model": model, "addresses": Addresses(
            kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home,
            token=infra.tokens.demo,
            registry_addr=registry_app.address, featurestore_addr=store.address, trainer_addr=trainer.address,
            inference_addr=inference.grpc_address, status_port=0,
            # Nothing listens here: the page must say so, not fail.
            monitor_addr="127.0.0.1:1", evaluator_addr="127.0.0.1:1")}
    finally:
        for app in reversed(started):
            await app.stop()


async def test_bootstrap_serves_v1_and_live_traffic_is_scored_and_labelled(services, infra, registry) -> None:  # type: ignore[no-untyped-def]
    config = DriverConfig(
        model=services["model"], day_seconds=20, rate=15, warmup_days=1, history_days=3, stable_days=1,
        drift_days=1, batch_size=7, window=50, epochs=3, run_params={"min_rows": "100"}, champion_wait=1.0,
        status_every=0, tick_seconds=0.2, documents=False)
    driver = DemoDriver(config, services["addresses"])
    page = StatusPage(driver, port=0, refresh_seconds=0.5)
    await driver.start()
    await page.start()
    try:
        version = await driver.bootstrap()
        assert version == 1
        champion = await registry.GetModelVersion(reg.GetModelVersionRequest(
            ref=reg.ModelVersionRef(model_name=config.model, alias="champion")))
        assert champion.model_version.version == 1
        policy = await registry.GetPromotionPolicy(reg.GetPromotionPolicyRequest(model_name=config.model))
        assert policy.mode == reg.PROMOTION_MODE_AUTOMATIC

        scored = await driver.run(max_transactions=30)
        assert scored >= 30 and driver.stats.unscored == 0
        first = list(driver.stats.recent)[:30]
        assert {p.version for p in first} == {1}
        assert all(0.0 <= p.probability <= 1.0 for p in first)
        # Keep the clock running until their labels are due (a few simulated hours = a few wall seconds).
        await driver.run(duration=6)

        wanted = {(p.request_id, p.transaction_id) for p in first}

        def labels(records: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
            out = set()
            for r in records:
                fb = predictions_pb2.FeedbackReceived.FromString(r.value)
                out.add((fb.request_id, fb.entity_id))
            return out
        records = await read_records(infra.kafka_bootstrap, FEEDBACK_RECEIVED.name,
                                     until=lambda rs: wanted <= labels(rs), timeout=30)
        assert wanted <= labels(records)
        truth = {p.transaction_id: p.truth for p in first}
        for r in records:
            fb = predictions_pb2.FeedbackReceived.FromString(r.value)
            if fb.entity_id in truth:
                assert fb.label.flag == truth[fb.entity_id]
                assert fb.observed_at.ToDatetime() >= fb.event_time.ToDatetime()
                assert fb.entity_keys["transaction_id"] == fb.entity_id

        # The driver narrates its own promotion from models.promoted (a consumer of its own, so waited for).
        async def narrated() -> bool:
            return any(e["topic"] == "models.promoted" and e["event"].get("version") == "1" for e in driver.events)
        await polling.eventually(narrated, 30, "the promotion of v1 narrated")

        await page.view.refresh()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{page.port}/api/status") as resp:
                assert resp.status == 200
                doc = await resp.json()
            async with http.get(f"http://127.0.0.1:{page.port}/") as resp:
                assert resp.status == 200 and "<svg" in await resp.text()
            async with http.get(f"http://127.0.0.1:{page.port}/nope") as resp:
                assert resp.status == 404 and "error" in await resp.json()
        assert doc["serving"] == {"champion": 1, "answered_by": 1}
        assert len(doc["accuracy"]["points"]) >= 2
        assert doc["accuracy"]["window"]["n"] > 0 and doc["counts"]["labels_sent"] >= 30
        assert any(r["registered_version"] == 1 for r in doc["retraining"]["runs"])
        assert {"windows", "evaluations"} <= set(doc["unavailable"])  # monitor/evaluator down: reported
    finally:
        await page.stop()
        await driver.stop()
