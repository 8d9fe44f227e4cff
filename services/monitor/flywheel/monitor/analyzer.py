"""The analysis worker: claims closed windows (FOR UPDATE SKIP LOCKED, so replicas share the
work), runs the analysis in a thread, stores the summary and the Evidently snapshot, decides on
alerts, and emits drift.detected / retrain.requests through the outbox, all in one transaction
per window. Also the janitor of the TTL'd tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from psycopg import AsyncConnection, OperationalError
from psycopg.errors import DeadlockDetected

from flywheel.common.db import Database
from flywheel.common.errors import NotFound, Unavailable
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue
from flywheel.common.topics import DRIFT_DETECTED, RETRAIN_REQUESTS
from flywheel.monitor import metrics
from flywheel.monitor.analysis import Analysis, DriftSettings, FeatureScore, Reference, WindowData, analyze, compress
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.decision import WindowOutcome, decide
from flywheel.monitor.ingest import SEP, SOURCE, close_overdue_time_windows
from flywheel.monitor.llm import OnlineScoring
from flywheel.monitor.llm_store import clean as clean_llm
from flywheel.monitor.reference import ReferenceCache
from flywheel.proto.events.v1 import common_pb2, models_pb2, monitoring_pb2

log = logging.getLogger(__name__)
REASON_DRIFT, REASON_PERFORMANCE = models_pb2.RETRAIN_REASON_DRIFT, models_pb2.RETRAIN_REASON_PERFORMANCE


def feature_pb(f: FeatureScore | dict | None) -> monitoring_pb2.FeatureDrift | None:
    if f is None:
        return None
    d = f.as_dict() if isinstance(f, FeatureScore) else f
    score = d["score"]
    return monitoring_pb2.FeatureDrift(feature=d["feature"], method=d["method"],
                                       score=0.0 if score is None or math.isnan(score) else score,
                                       threshold=d["threshold"], drifted=d["drifted"])


class Analyzer:
    def __init__(self, db: Database, settings: MonitorSettings, references: ReferenceCache,
                 online: OnlineScoring | None = None) -> None:
        self.db = db
        self.settings = settings
        self.references = references
        self.online = online or OnlineScoring(settings)
        self.drift = DriftSettings(settings.drift_share, settings.num_method, settings.cat_method,
                                   settings.num_threshold, settings.cat_threshold, settings.performance_tolerance,
                                   settings.performance_metric, settings.min_class_labels,
                                   settings.performance_z)
        self._task: asyncio.Task | None = None
        self._janitor_at = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="monitor-analyzer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                busy = await self.run_once()
                if loop.time() - self._janitor_at > 600:
                    await self.clean()
                    self._janitor_at = loop.time()
                if not busy:
                    await asyncio.sleep(self.settings.analysis_poll_seconds)
            except asyncio.CancelledError:
                raise
            except (OperationalError, DeadlockDetected, Unavailable) as exc:
                log.warning("analysis waiting for a dependency", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("analysis loop error")
                await asyncio.sleep(1.0)

    async def run_once(self, now: datetime | None = None) -> bool:
        """One step: close overdue windows, analyze one window, send due retrain requests. True when
        there was work (call again at once)."""
        now = now or datetime.now(UTC)
        async with self.db.connection() as conn, conn.transaction():
            await close_overdue_time_windows(conn, self.settings, now)
            await self.online.close_overdue(conn, now)
        analyzed = await self.analyze_next(now)
        async with self.db.connection() as conn, conn.transaction():
            await self.send_due_retrain_requests(conn, now)
        return analyzed

    async def analyze_next(self, now: datetime) -> bool:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT * FROM windows WHERE state = 'pending' OR reanalyze ORDER BY closed_at, sequence "
                "LIMIT 1 FOR UPDATE SKIP LOCKED")
            window = await cur.fetchone()
            if window is None:
                return False
            model, version = window["model_name"], window["version"]
            try:
                ref = await self.references.get(model, version)
            except NotFound as exc:
                await conn.execute("UPDATE windows SET state = 'failed', reanalyze = false, error = %s, "
                                   "analyzed_at = %s WHERE window_id = %s", (str(exc), now, window["window_id"]))
                metrics.WINDOWS_ANALYZED.labels(model, "failed").inc()
                return True
            data = await self._load(conn, window["window_id"], ref)
            with_drift = self.settings.window_mode == "count" or window["rows"] >= self.settings.min_window_rows
            try:
                result = await asyncio.to_thread(analyze, ref, data, self.drift, with_drift=with_drift)
            except Exception as exc:  # a window the analysis cannot handle must not block the others
                log.exception("window analysis failed", extra={"window_id": window["window_id"]})
                await conn.execute("UPDATE windows SET state = 'failed', reanalyze = false, error = %s, "
                                   "analyzed_at = %s WHERE window_id = %s",
                                   (f"{type(exc).__name__}: {exc}", now, window["window_id"]))
                metrics.WINDOWS_ANALYZED.labels(model, "failed").inc()
                return True
            summary = result.summary()
            await conn.execute(
                "UPDATE windows SET state = 'analyzed', reanalyze = false, summary = %s, "
                "snapshot_gz = COALESCE(%s, snapshot_gz), drifted = %s, labelled_rows = %s, error = %s, "
                "analyzed_at = %s WHERE window_id = %s",
                (json.dumps(summary), compress(result.snapshot_json) if result.snapshot_json else None,
                 result.drifted, result.labelled_rows, result.error or None, now, window["window_id"]))
            self._export(model, version, result)
            metrics.WINDOWS_ANALYZED.labels(model, "analyzed").inc()
            if await self._is_champion(conn, model, version):
                await self._decide(conn, window, result, now)
            return True

    async def _load(self, conn: AsyncConnection, window_id: str, ref: Reference) -> WindowData:
        cur = await conn.execute(
            "SELECT probability, numeric, categorical, label FROM observations WHERE window_id = %s "
            "ORDER BY ts, request_id, row_index", (window_id,))
        rows = await cur.fetchall()
        n_num, n_cat = len(ref.numeric), len(ref.categorical)
        numeric = np.full((len(rows), n_num), np.nan)
        categorical: list[list[str]] = []
        for i, r in enumerate(rows):
            if r["numeric"] is not None and n_num:
                values = np.frombuffer(bytes(r["numeric"]), dtype="<f4")
                numeric[i, :min(n_num, len(values))] = values[:n_num]
            cats = r["categorical"].split(SEP) if r["categorical"] is not None else []
            categorical.append((cats + [""] * n_cat)[:n_cat])
        prob = np.array([np.nan if r["probability"] is None else r["probability"] for r in rows], dtype=np.float64)
        labels = np.array([np.nan if r["label"] is None else float(r["label"]) for r in rows], dtype=np.float64)
        return WindowData(numeric, categorical, prob, labels)

    def _export(self, model: str, version: int, result: Analysis) -> None:
        v = str(version)
        for f in result.features:
            metrics.FEATURE_DRIFT.labels(model, v, f.feature).set(f.score)
        if result.prediction_drift is not None:
            metrics.FEATURE_DRIFT.labels(model, v, "prediction").set(result.prediction_drift.score)
        metrics.WINDOW_METRIC.labels(model, v, "drifted_share").set(result.drifted_share)
        for k, value in result.performance.items():
            metrics.WINDOW_METRIC.labels(model, v, k).set(value)
        for k, value in result.estimated_performance.items():
            metrics.WINDOW_METRIC.labels(model, v, f"est_{k}").set(value)

    @staticmethod
    async def _is_champion(conn: AsyncConnection, model: str, version: int) -> bool:
        """The model's champion: the version that most recently served the champion arm."""
        cur = await conn.execute(
            "SELECT version FROM version_state WHERE model_name = %s AND champion_seen_at IS NOT NULL "
            "ORDER BY champion_seen_at DESC, version DESC LIMIT 1", (model,))
        row = await cur.fetchone()
        return row is not None and row["version"] == version

    async def _decide(self, conn: AsyncConnection, window: dict, result: Analysis, now: datetime) -> None:
        s = self.settings
        model, version = window["model_name"], window["version"]
        cur = await conn.execute(
            "SELECT window_id, start_ts, drifted FROM windows WHERE model_name = %s AND version = %s "
            "AND state = 'analyzed' ORDER BY sequence DESC LIMIT %s", (model, version, s.hysteresis_m))
        recent = [WindowOutcome(r["window_id"], r["start_ts"], bool(r["drifted"])) for r in await cur.fetchall()]
        cur = await conn.execute("SELECT detected_at FROM alerts WHERE model_name = %s AND version = %s "
                                 "ORDER BY detected_at DESC LIMIT 1", (model, version))
        last = await cur.fetchone()
        decision = decide(recent, n=s.hysteresis_n, m=s.hysteresis_m,
                          last_alert_at=last["detected_at"] if last else None, now=now,
                          cooldown_seconds=s.cooldown_seconds)
        if not decision.alert or recent[0].window_id != window["window_id"]:
            return
        drift_id = str(uuid.uuid4())
        performance_based = result.performance_degraded
        measured = bool(result.performance)
        event = monitoring_pb2.DriftDetected(
            drift_id=drift_id, model=common_pb2.ModelRef(name=model, version=version), window_id=window["window_id"],
            features=[feature_pb(f) for f in result.features], drifted_share=result.drifted_share,
            performance=result.performance if measured else result.estimated_performance,
            performance_estimated=not measured,
            severity=monitoring_pb2.DRIFT_SEVERITY_CRITICAL if decision.drifted_of_last >= s.hysteresis_m
            or performance_based else monitoring_pb2.DRIFT_SEVERITY_WARNING,
            report_uri=f"monitor://windows/{window['window_id']}")
        if result.prediction_drift is not None:
            event.prediction_drift.CopyFrom(feature_pb(result.prediction_drift))
        if result.target_drift is not None:
            event.target_drift.CopyFrom(feature_pb(result.target_drift))
        event.window_start.FromDatetime(window["start_ts"])
        event.window_end.FromDatetime(window["end_ts"])
        event.detected_at.FromDatetime(now)
        assert decision.onset is not None
        await conn.execute(
            "INSERT INTO alerts (drift_id, model_name, version, window_id, onset, reason, detected_at, event) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (drift_id, model, version, window["window_id"], decision.onset,
             REASON_PERFORMANCE if performance_based else REASON_DRIFT, now, event.SerializeToString()))
        await conn.execute("UPDATE windows SET drift_event_id = %s WHERE window_id = %s",
                           (drift_id, window["window_id"]))
        await enqueue(conn, Event(DRIFT_DETECTED, model, event, SOURCE, id=drift_id))
        metrics.ALERTS.labels(model).inc()
        log.warning("drift detected", extra={"model": model, "version": version, "drift_id": drift_id,
                                             "window_id": window["window_id"], "why": "; ".join(result.reasons)})

    async def send_due_retrain_requests(self, conn: AsyncConnection, now: datetime) -> int:
        """Retrain once enough labels joined rows since the onset (the trainer needs labelled
        drifted data), or once the alert waited long enough."""
        cur = await conn.execute(
            "SELECT a.drift_id, a.model_name, a.version, a.onset, a.reason, a.detected_at, "
            " (SELECT count(*) FROM observations o WHERE o.model_name = a.model_name AND o.ts >= a.onset "
            "  AND o.label IS NOT NULL) AS labels "
            "FROM alerts a WHERE a.retrain_request_id IS NULL FOR UPDATE OF a SKIP LOCKED")
        sent = 0
        for a in await cur.fetchall():
            waited = now - a["detected_at"] >= timedelta(seconds=self.settings.retrain_max_wait_seconds)
            if a["labels"] < self.settings.retrain_min_labels and not waited:
                continue
            request = models_pb2.RetrainRequested(
                request_id=str(uuid.uuid4()), model_name=a["model_name"], kind=common_pb2.MODEL_KIND_PREDICTIVE,
                reason=a["reason"], parent=common_pb2.ModelRef(name=a["model_name"], version=a["version"]),
                drift_event_id=a["drift_id"],
                # Run parameters override the model spec; `tag.*` ones only describe the run (the trainer
                # copies them to the version's registry tags), so the audit trail says why it retrained.
                parameters={"tag.labels_since_onset": str(a["labels"]),
                            "tag.retrain_trigger": "labels" if a["labels"] >= self.settings.retrain_min_labels
                            else "max_wait"})
            request.window_start.FromDatetime(a["onset"])
            request.window_end.FromDatetime(now)
            await conn.execute("UPDATE alerts SET retrain_request_id = %s, retrain_requested_at = %s "
                               "WHERE drift_id = %s", (request.request_id, now, a["drift_id"]))
            await enqueue(conn, Event(RETRAIN_REQUESTS, a["model_name"], request, SOURCE, id=request.request_id))
            metrics.RETRAIN_REQUESTS.labels(a["model_name"]).inc()
            sent += 1
        return sent

    async def clean(self) -> None:
        """TTL janitor of the join tables (observations of open windows are kept)."""
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM observations o USING windows w WHERE o.window_id = w.window_id AND w.state <> 'open' "
                "AND o.ingested_at < now() - %s", (timedelta(seconds=self.settings.observation_ttl_seconds),))
            await conn.execute("DELETE FROM labels WHERE received_at < now() - %s",
                               (timedelta(seconds=self.settings.label_ttl_seconds),))
            await clean_llm(conn, timedelta(seconds=self.settings.observation_ttl_seconds),
                            timedelta(seconds=self.settings.label_ttl_seconds))
