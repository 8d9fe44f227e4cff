"""Read side of the monitor's schema: windows, version status, reports (for the gRPC API)."""

from __future__ import annotations

import gzip
from datetime import timedelta
from typing import Any

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.monitor.analyzer import feature_pb
from flywheel.proto.events.v1 import common_pb2, monitoring_pb2
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb

STATES = {"open": pb.WINDOW_STATE_UNSPECIFIED, "pending": pb.WINDOW_STATE_PENDING,
          "analyzed": pb.WINDOW_STATE_ANALYZED, "failed": pb.WINDOW_STATE_FAILED}
COLUMNS = ("window_id, model_name, version, sequence, state, rows, labelled_rows, start_ts, end_ts, summary, "
           "drifted, drift_event_id, error, closed_at, analyzed_at")


def window_pb(r: dict[str, Any]) -> pb.Window:
    w = pb.Window(window_id=r["window_id"], model=common_pb2.ModelRef(name=r["model_name"], version=r["version"]),
                  sequence=r["sequence"], state=STATES[r["state"]], rows=r["rows"],
                  labelled_rows=r["labelled_rows"], drifted=bool(r["drifted"]),
                  drift_event_id=r["drift_event_id"] or "", error=r["error"] or "")
    for field, column in (("start", "start_ts"), ("end", "end_ts"), ("closed_at", "closed_at"),
                          ("analyzed_at", "analyzed_at")):
        if r[column] is not None:
            getattr(w, field).FromDatetime(r[column])
    summary = r["summary"] or {}
    w.features.extend(feature_pb(f) for f in summary.get("features", []))
    w.drifted_share = summary.get("drifted_share", 0.0)
    for field in ("prediction_drift", "target_drift"):
        if summary.get(field):
            getattr(w, field).CopyFrom(feature_pb(summary[field]))
    w.performance.update(summary.get("performance", {}))
    w.estimated_performance.update(summary.get("estimated_performance", {}))
    return w


def llm_window_pb(r: dict[str, Any]) -> pb.LlmWindow:
    """An llm_windows row as the API's LlmWindow."""
    w = pb.LlmWindow(window_id=r["window_id"], application=r["application"],
                     model=common_pb2.ModelRef(name=r["model_name"], version=r["model_version"]),
                     sequence=r["sequence"], closed=r["state"] == "closed", generations=r["generations"],
                     is_reference=r["is_reference"], degraded=bool(r["degraded"]),
                     drift_event_id=r["drift_event_id"] or "", retrain_request_id=r["retrain_request_id"] or "",
                     reviews=r["reviews"])
    for field, column in (("start", "start_ts"), ("end", "end_ts"), ("closed_at", "closed_at")):
        if r[column] is not None:
            getattr(w, field).FromDatetime(r[column])
    w.scores.update(r["scores"] or {})
    w.reference.update(r["reference"] or {})
    w.checks.extend(pb.LlmCheck(metric=c["metric"], value=c["value"], reference=c["reference"] or 0.0,
                                score=c["score"], threshold=c["threshold"], degraded=c["degraded"])
                    for c in r["checks"] or [])
    return w


class MonitorStore:
    def __init__(self, db: Database, *, hysteresis_n: int, hysteresis_m: int, cooldown_seconds: float) -> None:
        self.db = db
        self.hysteresis_n = hysteresis_n
        self.hysteresis_m = hysteresis_m
        self.cooldown_seconds = cooldown_seconds

    async def window(self, window_id: str) -> tuple[pb.Window, bytes | None]:
        if not window_id:
            raise InvalidArgument("window_id is required")
        async with self.db.connection() as conn:
            cur = await conn.execute(f"SELECT {COLUMNS}, snapshot_gz FROM windows WHERE window_id = %s",
                                     (window_id,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"window {window_id!r} does not exist")
        return window_pb(row), row["snapshot_gz"]

    async def list_windows(self, model_name: str, version: int, page_size: int, page_token: str,
                           ) -> tuple[list[pb.Window], str]:
        if not model_name:
            raise InvalidArgument("model_name is required")
        if page_size < 0 or version < 0:
            raise InvalidArgument("page_size and version must not be negative")
        size = min(page_size or 50, 500)
        try:
            offset = int(page_token) if page_token else 0
        except ValueError:
            raise InvalidArgument(f"page_token {page_token!r} is not one this server returned") from None
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {COLUMNS} FROM windows WHERE model_name = %s AND (%s = 0 OR version = %s) "
                "AND state <> 'open' ORDER BY closed_at DESC, version DESC, sequence DESC OFFSET %s LIMIT %s",
                (model_name, version, version, offset, size + 1))
            rows = await cur.fetchall()
        token = str(offset + size) if len(rows) > size else ""
        return [window_pb(r) for r in rows[:size]], token

    async def status(self, model_name: str, recent: int) -> pb.GetModelStatusResponse:
        if not model_name:
            raise InvalidArgument("model_name is required")
        if recent < 0:
            raise InvalidArgument("recent_windows must not be negative")
        recent = min(recent or 10, 100)
        out = pb.GetModelStatusResponse(model_name=model_name)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT s.version, s.windows, coalesce(w.rows, 0) AS open_rows FROM version_state s "
                "LEFT JOIN windows w ON w.window_id = s.open_window_id WHERE s.model_name = %s ORDER BY s.version",
                (model_name,))
            versions = await cur.fetchall()
            if not versions:
                raise NotFound(f"the monitor has seen no predictions of model {model_name!r}")
            for v in versions:
                status = pb.VersionStatus(model=common_pb2.ModelRef(name=model_name, version=v["version"]),
                                          windows=v["windows"], open_window_rows=v["open_rows"],
                                          hysteresis_n=self.hysteresis_n, hysteresis_m=self.hysteresis_m)
                cur = await conn.execute(
                    "SELECT drifted FROM windows WHERE model_name = %s AND version = %s AND state = 'analyzed' "
                    "ORDER BY sequence DESC LIMIT %s", (model_name, v["version"], self.hysteresis_m))
                status.drifted_of_last = sum(bool(r["drifted"]) for r in await cur.fetchall())
                cur = await conn.execute(
                    "SELECT event, detected_at, retrain_request_id FROM alerts WHERE model_name = %s AND version = %s "
                    "ORDER BY detected_at DESC LIMIT 1", (model_name, v["version"]))
                alert = await cur.fetchone()
                if alert is not None:
                    status.last_alert.CopyFrom(monitoring_pb2.DriftDetected.FromString(bytes(alert["event"])))
                    status.last_retrain_request_id = alert["retrain_request_id"] or ""
                    until = alert["detected_at"] + timedelta(seconds=self.cooldown_seconds)
                    status.cooldown_until.FromDatetime(until)
                cur = await conn.execute(
                    f"SELECT {COLUMNS} FROM windows WHERE model_name = %s AND version = %s AND state <> 'open' "
                    "ORDER BY sequence DESC LIMIT %s", (model_name, v["version"], recent))
                status.recent_windows.extend(window_pb(r) for r in await cur.fetchall())
                out.versions.append(status)
        return out


def decompress(data: bytes) -> str:
    return gzip.decompress(data).decode()
