"""The closed predictive loop, end to end, on the embedded broker and database.

Every service of the loop runs in-process (registry, feature store, trainer, inference, monitor,
evaluator) and the payments driver plays the bank: after the first training nobody pushes a
button. Stable traffic raises no alert; the drift onset makes the monitor emit drift.detected
within a few windows, then retrain.requests once labels of drifted payments have joined; the
trainer trains on that window, the evaluator passes the candidate against the champion, the
registry promotes it, inference answers with it, and the detection quality on drifted traffic
(fraud F1, see RECOVERED_F1) recovers. Each event carries the same lineage, which the registry
returns in one call. Then the negative case: a worse candidate is rejected and the champion stays.

Every assertion reads the service that owns the fact (the monitor's windows and alerts, the trainer's runs,
the evaluator's evaluations, the registry's lineage and decisions), never the driver's narration of the
topics: the narration is a separate consumer that nothing orders before the barriers this test waits on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import payments_demo
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from payments_demo.live import DRIFT, STABLE, Addresses, DemoDriver, DriverConfig

from flywheel.common import rpc
from flywheel.evaluator import main as evaluator_main
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.featurestore import main as featurestore_main
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.inference import main as inference_main
from flywheel.inference.config import InferenceSettings
from flywheel.monitor import main as monitor_main
from flywheel.monitor.config import MonitorSettings
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as epb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as epb_grpc
from flywheel.proto.events.v1 import models_pb2
from flywheel.proto.monitor.v1 import monitor_service_pb2 as mpb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as mpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as tpb_grpc
from flywheel.trainer import main as trainer_main
from flywheel.trainer.config import TrainerSettings
from tests import polling
from tests.service_helpers import fraud_spec_dir, shared_settings, stop_in_reverse

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
        await stop_in_reverse(started)


@pytest.mark.timeout(1200)
async def test_drift_retrains_evaluates_promotes_and_recovers(platform, registry) -> None:  # type: ignore[no-untyped-def]
    model = platform["model"]
    config = DriverConfig(
        model=model, day_seconds=DAY_SECONDS, rate=PER_DAY / DAY_SECONDS, warmup_days=30, history_days=10,
        stable_days=7, drift_days=300, batch_size=10, window=WINDOW_ROWS, epochs=15, champion_wait=20.0,
        status_every=0, tick_seconds=0.2, documents=False)
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
            """The monitor's closed windows of `version` (0 = every version), newest first."""
            found: list[mpb.Window] = []
            token = ""
            while True:
                page = await monitor.ListWindows(mpb.ListWindowsRequest(
                    model_name=model, version=version, page_size=100, page_token=token))
                found.extend(page.windows)
                if not (token := page.next_page_token):
                    return found

        async def evaluations_of(version: int) -> list[epb.Evaluation]:
            """The evaluator's evaluations with `version` as the candidate (queued and running ones too)."""
            listed = await evaluator.ListEvaluations(epb.ListEvaluationsRequest(model_name=model, page_size=100))
            return [e for e in listed.evaluations if e.candidate_version == version]

        async def lineage(version: int) -> reg.GetLineageResponse:
            return await registry.GetLineage(reg.GetLineageRequest(ref=reg.ModelVersionRef(model_name=model,
                                                                                           version=version)))

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
            alarms = [w for w in await windows(0) if w.drift_event_id]
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
            assert driver.phase == DRIFT and await champion() == v2

            # The drift alert, from the monitor: one window of v1 tipped it, after the onset, and it is v1's last
            # alert (no other version alerted).
            [alert_window] = [w for w in await windows(0) if w.drift_event_id]
            drift_id = alert_window.drift_event_id
            assert alert_window.model.version == v1
            assert alert_window.start.ToDatetime(UTC) >= onset - timedelta(seconds=5)
            status = await monitor.GetModelStatus(mpb.GetModelStatusRequest(model_name=model))
            [v1_status] = [v for v in status.versions if v.model.version == v1]
            alert = v1_status.last_alert
            assert (alert.drift_id, alert.window_id, alert.model.version) == (drift_id, alert_window.window_id, v1)
            assert alert.features and (alert.drifted_share > 0 or alert.prediction_drift.drifted)
            assert not [v for v in status.versions if v.model.version != v1 and v.last_alert.drift_id]

            # The retrain request the monitor sent after that alert, and the run it started in the trainer.
            request_id = v1_status.last_retrain_request_id
            assert request_id

            async def request_runs() -> list[tpb.Run]:
                """The trainer's runs for that request, once finished (it records the outcome right after the
                registry took the version; nothing orders that write before the promotion that followed)."""
                runs = (await trainer.ListRuns(tpb.ListRunsRequest(model_name=model))).runs
                mine = [r for r in runs if r.retrain_request_id == request_id]
                return mine if mine and all(r.HasField("finished_at") for r in mine) else []
            [run] = await eventually(request_runs, 60, "the trainer's run for the retrain request")
            assert run.drift_event_id == drift_id and run.parent.version == v1
            assert run.reason in (models_pb2.RETRAIN_REASON_DRIFT, models_pb2.RETRAIN_REASON_PERFORMANCE)
            assert run.status == tpb.RUN_STATUS_SUCCEEDED and run.registered_version == v2

            # The version the run registered, with its lineage, from the registry.
            registered = (await registry.GetModelVersion(reg.GetModelVersionRequest(
                ref=reg.ModelVersionRef(model_name=model, version=v2)))).model_version
            assert (registered.lineage.drift_event_id, registered.lineage.retrain_request_id,
                    registered.lineage.training_run_id, registered.lineage.parent_version) == (
                drift_id, request_id, run.run_id, v1)

            # The evaluator's verdict on it: passed against v1.
            [verdict] = await evaluations_of(v2)
            assert verdict.verdict == models_pb2.EVALUATION_VERDICT_PASSED and verdict.baseline_version == v1
            evaluation = (await evaluator.GetEvaluation(epb.GetEvaluationRequest(
                evaluation_id=verdict.evaluation_id))).evaluation
            assert evaluation.rows >= 200 and evaluation.candidate_calibration

            # The whole chain from the registry, in one call: the same lineage, the evaluation with the registry's
            # decision (its report merged into the lineage), and the promotion it justified.
            chain = await lineage(v2)
            assert (chain.drift_event_id, chain.retrain_request_id, chain.training_run_id, chain.parent_version) == (
                drift_id, request_id, run.run_id, v1)
            assert [(e.evaluation_id, e.verdict, e.baseline_version, e.decision) for e in chain.evaluations] == [
                (verdict.evaluation_id, models_pb2.EVALUATION_VERDICT_PASSED, v1, "promoted")]
            assert evaluation.report_uri and evaluation.report_uri in chain.model_version.lineage.eval_report_refs
            [promoted] = [c for c in chain.alias_changes if c.alias == "champion" and c.version == v2]
            assert (promoted.previous_version, promoted.evaluation_id, promoted.reason) == (
                v1, verdict.evaluation_id, models_pb2.PROMOTION_REASON_EVALUATION)

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
            window_end = Timestamp()
            window_end.GetCurrentTime()
            bad = await trainer.StartRun(tpb.StartRunRequest(
                model_name=model, window_start=run.window_start, window_end=window_end,
                params={"epochs": "1", "learning_rate": "0.000001", "hidden": "2", "calibration": "none",
                        "note": "deliberately undertrained"},
                reason=models_pb2.RETRAIN_REASON_MANUAL))

            async def bad_verdict() -> epb.Evaluation | None:
                run = (await trainer.GetRun(tpb.GetRunRequest(run_id=bad.run.run_id))).run
                if run.status == tpb.RUN_STATUS_FAILED:
                    raise AssertionError(f"the undertrained run failed: {run.failure_reason}")
                done = [e for e in await evaluations_of(run.registered_version) if e.HasField("completed_at")] \
                    if run.registered_version else []
                return done[0] if done else None
            rejected = await eventually(bad_verdict, 240, "the verdict on the undertrained candidate")
            assert rejected.verdict == models_pb2.EVALUATION_VERDICT_FAILED and rejected.baseline_version == v2
            assert any(not c.passed for c in rejected.checks)
            v3 = rejected.candidate_version

            async def decided() -> reg.GetLineageResponse | None:
                chain3 = await lineage(v3)
                return chain3 if chain3.evaluations else None
            chain3 = await eventually(decided, 60, "the registry's decision on the undertrained candidate")
            assert [(e.evaluation_id, e.decision) for e in chain3.evaluations] == [(rejected.evaluation_id, "failed")]
            assert not chain3.alias_changes and await champion() == v2
        finally:
            driver.request_stop()
            if traffic is not None:
                await asyncio.gather(traffic, return_exceptions=True)
            await driver.stop()
