"""The closed predictive loop, end to end, on the embedded broker and database.

Every service of the loop runs in-process (registry, feature store, trainer, inference, monitor,
evaluator) and the payments driver plays the bank: after the first training nobody pushes a
button. Stable traffic raises no alert; the drift onset makes the monitor emit drift.detected
within a few windows, then retrain.requests once labels of drifted payments have joined; the
trainer trains on that window, the evaluator passes the candidate against the champion, the
registry promotes it, inference answers with it, and the detection quality on drifted traffic
(fraud F1, see RECOVERED_F1) recovers. Each event carries the same lineage, which the registry
returns in one call. Then the negative case: a worse candidate is rejected and the champion stays.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common import rpc
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as epb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as epb_grpc
from flywheel.proto.events.v1 import models_pb2
from flywheel.proto.monitor.v1 import monitor_service_pb2 as mpb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as mpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as tpb_grpc
from tests import polling
from tests.service_helpers import fraud_spec_dir, shared_settings

payments_demo = pytest.importorskip("payments_demo")
monitor_main = pytest.importorskip("flywheel.monitor.main")
evaluator_main = pytest.importorskip("flywheel.evaluator.main")
featurestore_main = pytest.importorskip("flywheel.featurestore.main")
inference_main = pytest.importorskip("flywheel.inference.main")
trainer_main = pytest.importorskip("flywheel.trainer.main")

from payments_demo.live import DRIFT, STABLE, Addresses, DemoDriver, DriverConfig  # noqa: E402

from flywheel.evaluator.config import EvaluatorSettings  # noqa: E402
from flywheel.featurestore.config import FeatureStoreSettings  # noqa: E402
from flywheel.inference.config import InferenceSettings  # noqa: E402
from flywheel.monitor.config import MonitorSettings  # noqa: E402
from flywheel.trainer.config import TrainerSettings  # noqa: E402

pytestmark = pytest.mark.integration

# Payments per simulated day, wall seconds per simulated day, and rows per monitor window. A window
# spans two simulated days: shorter ones see part of the daily cycle (hour of day, 24-hour counts)
# and single days of fraud bursts, and "drift" on stable traffic.
PER_DAY = 200
DAY_SECONDS = 5.0
WINDOW_ROWS = 2 * PER_DAY
# Recovery is judged on F1 of the fraud class (the metric the model's threshold maximizes), not raw
# accuracy: with ~7% fraud after the onset, "never fraud" scores 0.93 accuracy. Measured here: the old
# champion on drifted traffic F1 0.14 (recall 0.08, accuracy 0.92); the retrained one F1 0.49
# (recall 0.70, accuracy 0.89: it flags more, so more false alarms at the max-F1 threshold).
RECOVERED_F1 = 0.35
LOOP_TIMEOUT = 420.0
# Every check is a few gRPC or database calls: twice a second is enough.
eventually = partial(polling.eventually, every=0.5)


@pytest.fixture(scope="module")
async def platform(infra, registry_app, tmp_path_factory) -> AsyncIterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    common = shared_settings(infra)
    model = f"fraud-loop-{suffix}"
    specs = fraud_spec_dir(tmp_path_factory, model)
    started: list[Any] = []

    async def start(app: Any) -> Any:
        await app.start()
        started.append(app)
        return app

    try:
        store = await start(featurestore_main.FeatureStoreApp(FeatureStoreSettings(
            **common, db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
            repo=str(payments_demo.FEATURE_REPO))))
        trainer = await start(trainer_main.TrainerApp(TrainerSettings(
            **common, db_schema=f"trainer_{suffix}", consumer_group=f"trainer-{suffix}", specs_dir=specs,
            featurestore_addr=store.address, registry_addr=registry_app.address, poll_interval=0.2)))
        evaluator = await start(evaluator_main.EvaluatorApp(EvaluatorSettings(
            **common, db_schema=f"evaluator_{suffix}", consumer_group=f"evaluator-{suffix}", specs_dir=specs,
            featurestore_addr=store.address, registry_addr=registry_app.address, label_poll_seconds=1.0,
            max_wait_seconds=120.0, poll_interval=0.2)))
        monitor = await start(monitor_main.MonitorApp(MonitorSettings(
            **common, db_schema=f"monitor_{suffix}", consumer_group=f"monitor-{suffix}",
            registry_addr=registry_app.address, window_size=WINDOW_ROWS, hysteresis_n=2, hysteresis_m=3,
            cooldown_seconds=600, retrain_min_labels=1600, retrain_max_wait_seconds=180)))
        inference = await start(inference_main.InferenceApp(InferenceSettings(
            **common, http_port=0, models=[model], registry_addr=registry_app.address,
            featurestore_addr=store.address, db_schema=f"inference_{suffix}", consumer_group=f"inference-{suffix}")))
        yield {"model": model, "trainer": trainer, "monitor": monitor, "evaluator": evaluator, "addresses": Addresses(
            kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home,
            token=infra.tokens.demo,
            registry_addr=registry_app.address, featurestore_addr=store.address, trainer_addr=trainer.address,
            inference_addr=inference.grpc_address, monitor_addr=monitor.address, evaluator_addr=evaluator.address,
            status_port=0)}
    finally:
        for app in reversed(started):
            await app.stop()


def events_of(driver: DemoDriver, topic: str, model: str) -> list[dict[str, Any]]:
    """Events the driver heard on `topic` about `model` (payload as a dict, proto field names)."""
    found = []
    for entry in driver.events:
        event = entry["event"]
        name = event.get("model_name") or event.get("model", {}).get("name")
        if entry["topic"] == topic and name == model:
            found.append(event)
    return found


@pytest.mark.timeout(1200)
async def test_drift_retrains_evaluates_promotes_and_recovers(platform, registry) -> None:  # type: ignore[no-untyped-def]
    model = platform["model"]
    config = DriverConfig(
        model=model, day_seconds=DAY_SECONDS, rate=PER_DAY / DAY_SECONDS, warmup_days=30, history_days=10,
        stable_days=7, drift_days=300, batch_size=10, window=WINDOW_ROWS, epochs=15, champion_wait=20.0,
        status_every=0, tick_seconds=0.2)
    driver = DemoDriver(config, platform["addresses"])
    await driver.start()
    traffic: asyncio.Task | None = None
    auth = platform["addresses"].client_auth()  # the demo's token: it reads, trains and evaluates
    async with rpc.channel(platform["monitor"].address, auth=auth) as mch, \
            rpc.channel(platform["trainer"].address, auth=auth) as tch, \
            rpc.channel(platform["evaluator"].address, auth=auth) as ech:
        monitor, trainer = mpb_grpc.MonitorServiceStub(mch), tpb_grpc.TrainerServiceStub(tch)
        evaluator = epb_grpc.EvaluatorServiceStub(ech)

        async def windows(version: int) -> list[mpb.Window]:
            page = await monitor.ListWindows(mpb.ListWindowsRequest(model_name=model, version=version, page_size=100))
            return list(page.windows)

        async def champion() -> int:
            answer = await registry.GetModelVersion(reg.GetModelVersionRequest(
                ref=reg.ModelVersionRef(model_name=model, alias="champion")))
            return answer.model_version.version

        try:
            # -- the first training is the only manual step --------------------------------------------------------
            v1 = await driver.bootstrap()
            assert v1 >= 1 and await champion() == v1

            # -- stable traffic: windows are analyzed, nothing drifts ---------------------------------------------
            await driver.run(duration=config.stable_days * config.day_seconds - 1)
            assert driver.phase == STABLE

            async def analyzed_stable() -> list[mpb.Window]:
                ws = [w for w in await windows(v1) if w.state == mpb.WINDOW_STATE_ANALYZED]
                return ws if len(ws) >= 3 else []
            stable_windows = await eventually(analyzed_stable, 90, "3 analyzed stable windows")
            assert all(w.rows == WINDOW_ROWS for w in stable_windows)
            alarms = events_of(driver, "drift.detected", model)
            assert not alarms, f"false alarm on stable traffic: {alarms}"
            status = await monitor.GetModelStatus(mpb.GetModelStatusRequest(model_name=model))
            [v1_status] = [v for v in status.versions if v.model.version == v1]
            assert not v1_status.last_alert.drift_id

            # -- drift: alert, retrain, evaluate, promote, serve ---------------------------------------------------
            onset = datetime.now(UTC)
            traffic = asyncio.create_task(driver.run(duration=LOOP_TIMEOUT + 120))

            async def new_champion_serving() -> int:
                return driver.stats.last_version if driver.stats.last_version > v1 else 0
            async def loop_state() -> str:
                runs = (await trainer.ListRuns(tpb.ListRunsRequest(model_name=model))).runs
                listed = await evaluator.ListEvaluations(epb.ListEvaluationsRequest(model_name=model))
                evaluations = listed.evaluations
                ws = await windows(v1)
                return "\n".join([
                    *(e["text"] for e in driver.events),
                    *(f"run {r.run_id[:8]} {tpb.RunStatus.Name(r.status)} v{r.registered_version} {r.failure_reason}"
                      for r in runs),
                    *(f"evaluation v{e.candidate_version} {e.verdict} {e.error} {list(e.checks)}" for e in evaluations),
                    *(f"window {w.sequence} rows {w.rows} labelled {w.labelled_rows} drifted {w.drifted} "
                      f"share {w.drifted_share:.2f}" for w in ws[:8]),
                    f"driver: {driver.stats.snapshot()['by_phase_version']}",
                    f"trainer labels: {await trainer_labels()}", f"now: {datetime.now(UTC).isoformat()}"])

            async def trainer_labels() -> Any:
                async with platform["trainer"].db.connection() as conn:
                    return await (await conn.execute(
                        "SELECT count(*), min(event_time), max(event_time), max(observed_at), max(received_at)"
                        " FROM labels")).fetchone()
            v2 = await eventually(new_champion_serving, LOOP_TIMEOUT, "a new champion answering drifted traffic",
                                  state=loop_state)
            assert driver.phase == DRIFT

            [alert] = events_of(driver, "drift.detected", model)
            drift_id = alert["drift_id"]
            assert alert["model"]["version"] == str(v1) and alert["features"]
            assert alert["drifted_share"] > 0 or alert["prediction_drift"].get("drifted")
            alert_window = [w for w in await windows(v1) if w.window_id == alert["window_id"]]
            assert alert_window and alert_window[0].drift_event_id == drift_id
            assert alert_window[0].start.ToDatetime(UTC) >= onset - timedelta(seconds=5)

            [request] = events_of(driver, "retrain.requests", model)
            assert request["drift_event_id"] == drift_id and request["parent"]["version"] == str(v1)
            assert request["reason"] in ("RETRAIN_REASON_DRIFT", "RETRAIN_REASON_PERFORMANCE")

            runs = (await trainer.ListRuns(tpb.ListRunsRequest(model_name=model))).runs
            [run] = [r for r in runs if r.retrain_request_id == request["request_id"]]
            assert run.drift_event_id == drift_id and run.registered_version == v2
            assert run.status == tpb.RUN_STATUS_SUCCEEDED

            [registered] = [e for e in events_of(driver, "models.registered", model)
                            if e["model"]["version"] == str(v2)]
            for lineage in (registered["lineage"],):
                assert lineage["drift_event_id"] == drift_id
                assert lineage["retrain_request_id"] == request["request_id"]
                assert lineage["training_run_id"] == run.run_id and lineage["parent_version"] == str(v1)

            [verdict] = [e for e in events_of(driver, "evaluations.completed", model)
                         if e["candidate_version"] == str(v2)]
            assert verdict["verdict"] == "EVALUATION_VERDICT_PASSED" and verdict["baseline_version"] == str(v1)
            assert verdict["lineage"]["drift_event_id"] == drift_id
            assert verdict["lineage"]["training_run_id"] == run.run_id

            [promoted] = [e for e in events_of(driver, "models.promoted", model)
                          if e["alias"] == "champion" and e["version"] == str(v2)]
            assert promoted["evaluation_id"] == verdict["evaluation_id"]
            assert promoted["reason"] == "PROMOTION_REASON_EVALUATION"
            assert promoted["lineage"]["drift_event_id"] == drift_id

            # The whole chain from the registry, in one call.
            chain = await registry.GetLineage(reg.GetLineageRequest(ref=reg.ModelVersionRef(model_name=model,
                                                                                            version=v2)))
            assert (chain.drift_event_id, chain.retrain_request_id, chain.training_run_id, chain.parent_version) == (
                drift_id, request["request_id"], run.run_id, v1)
            assert [(e.evaluation_id, e.decision) for e in chain.evaluations] == [(verdict["evaluation_id"],
                                                                                    "promoted")]
            assert any(c.alias == "champion" and (c.previous_version, c.version) == (v1, v2)
                       and c.evaluation_id == verdict["evaluation_id"] for c in chain.alias_changes)
            evaluation = (await evaluator.GetEvaluation(epb.GetEvaluationRequest(
                evaluation_id=verdict["evaluation_id"]))).evaluation
            assert evaluation.rows >= 200 and evaluation.candidate_calibration

            # -- recovery: the new champion on drifted traffic ------------------------------------------------------
            async def scored_by_new() -> bool:
                scored = driver.stats.by_phase_version.get((DRIFT, v2))
                return scored is not None and scored.n >= 3 * WINDOW_ROWS
            await eventually(scored_by_new, 120, "drifted payments scored by the new champion")
            old = driver.stats.by_phase_version[(DRIFT, v1)].metrics()
            new = driver.stats.by_phase_version[(DRIFT, v2)].metrics()
            print(f"drifted traffic: v{v1} {old} -> v{v2} {new}")
            assert new["f1"] >= RECOVERED_F1 and new["f1"] > 2 * (old["f1"] or 0.0)
            assert new["recall"] > old["recall"]

            # -- the negative case: a worse candidate is rejected, the champion stays --------------------------------
            window_start, window_end = Timestamp(), Timestamp()
            window_start.FromJsonString(request["window_start"])
            window_end.GetCurrentTime()
            bad = await trainer.StartRun(tpb.StartRunRequest(
                model_name=model, window_start=window_start, window_end=window_end,
                params={"epochs": "1", "learning_rate": "0.000001", "hidden": "2", "calibration": "none",
                        "note": "deliberately undertrained"},
                reason=models_pb2.RETRAIN_REASON_MANUAL))

            async def bad_verdict() -> dict[str, Any] | None:
                run = (await trainer.GetRun(tpb.GetRunRequest(run_id=bad.run.run_id))).run
                if run.status == tpb.RUN_STATUS_FAILED:
                    raise AssertionError(f"the undertrained run failed: {run.failure_reason}")
                found = [e for e in events_of(driver, "evaluations.completed", model)
                         if run.registered_version and e["candidate_version"] == str(run.registered_version)]
                return found[0] if found else None
            rejected = await eventually(bad_verdict, 240, "the verdict on the undertrained candidate")
            assert rejected["verdict"] == "EVALUATION_VERDICT_FAILED" and rejected["baseline_version"] == str(v2)
            assert any(not c.get("passed") for c in rejected["checks"])
            await asyncio.sleep(2)  # the registry has acted on it (its decision is recorded below)
            assert await champion() == v2
            v3 = int(rejected["candidate_version"])
            chain3 = await registry.GetLineage(reg.GetLineageRequest(ref=reg.ModelVersionRef(model_name=model,
                                                                                             version=v3)))
            assert [e.decision for e in chain3.evaluations] == ["failed"] and not chain3.alias_changes
        finally:
            driver.request_stop()
            if traffic is not None:
                await asyncio.gather(traffic, return_exceptions=True)
            await driver.stop()
