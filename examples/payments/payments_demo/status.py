"""The demo's status page: what the loop is doing, in one browser tab (served by the driver).

`/` is an HTML page (auto-refreshing, no scripts from anywhere: the machine may be offline) with
the serving version, accuracy over time as an inline SVG plot (drift onset and promotions
marked), drift scores per monitor window, alerts, retraining runs, evaluation verdicts and
promotions. `/api/status` is the same as JSON, `/plot.svg` the plot alone, `/metrics` the
driver's Prometheus metrics. The monitor and evaluator are asked over gRPC; when one is not
reachable its section says so and the rest still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

log = logging.getLogger("payments_demo.status")

# How often the platform's side (registry, monitor, trainer, evaluator) is asked again, in seconds.
REFRESH_SECONDS = 3.0
PLOT_WIDTH, PLOT_HEIGHT = 860, 260
_MARGIN = {"left": 48, "right": 16, "top": 16, "bottom": 28}
_COLORS = {"accuracy": "#1f77b4", "f1": "#ff7f0e", "recall": "#2ca02c"}


def accuracy_svg(series: Sequence[dict[str, Any]], markers: Sequence[dict[str, Any]] = (), *,
                 metrics: Sequence[str] = ("accuracy", "f1"), width: int = PLOT_WIDTH,
                 height: int = PLOT_HEIGHT) -> str:
    """An SVG line plot of windowed metrics over wall time (points `{"t": unix seconds, metric: 0..1}`),
    with vertical markers (`{"t", "kind": drift|promotion|serving, "label"}`); y is fixed to 0..1."""
    x0, x1 = _MARGIN["left"], width - _MARGIN["right"]
    y0, y1 = height - _MARGIN["bottom"], _MARGIN["top"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="accuracy over time" '
           'font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + (y1 - y0) * v
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{v:.2f}</text>')
    times = [p["t"] for p in series] + [m["t"] for m in markers]
    if not series:
        out.append(f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" fill="#888">'
                   'no predictions scored yet</text></svg>')
        return "".join(out)
    t_min, t_max = min(times), max(times)
    span = max(t_max - t_min, 1e-9)

    def x_of(t: float) -> float:
        return x0 + (x1 - x0) * (t - t_min) / span

    for m in markers:
        x = x_of(m["t"])
        color = {"drift": "#d62728", "promotion": "#9467bd"}.get(m.get("kind", ""), "#7f7f7f")
        label = html.escape(str(m.get("label") or m.get("kind", "")))
        out.append(f'<line class="marker-{html.escape(m.get("kind", ""))}" x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" '
                   f'y2="{y0}" stroke="{color}" stroke-dasharray="4 3"/>'
                   f'<text x="{x + 3:.1f}" y="{y1 + 10}" fill="{color}">{label}</text>')
    for i, metric in enumerate(metrics):
        points = [(x_of(p["t"]), y0 + (y1 - y0) * p[metric]) for p in series if p.get(metric) is not None]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline class="series-{metric}" fill="none" stroke="{_COLORS.get(metric, "#333")}" '
                       f'stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{x0 + 8 + 90 * i}" y="{height - 8}" fill="{_COLORS.get(metric, "#333")}">'
                   f'&#9632; {metric}</text>')
    elapsed = t_max - t_min
    out.append(f'<text x="{x1}" y="{height - 8}" text-anchor="end" fill="#555">last {elapsed:.0f} s</text></svg>')
    return "".join(out)


class PlatformView:
    """The platform's side of the page, refreshed in the background: each source is independent, so one
    service being down (e.g. the monitor, not deployed yet) leaves a message instead of an error page."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.data: dict[str, Any] = {"champion": None, "windows": [], "runs": [], "evaluations": [],
                                     "errors": {}, "refreshed_at": None}

    async def refresh(self) -> None:
        from google.protobuf.json_format import MessageToDict

        from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as epb
        from flywheel.proto.monitor.v1 import monitor_service_pb2 as mpb
        from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb

        platform, model = self.driver.platform, self.driver.config.model
        if platform is None:
            return

        def as_dicts(messages: Any) -> list[dict[str, Any]]:
            return [MessageToDict(m, preserving_proto_field_name=True) for m in messages]

        calls = {
            "champion": lambda: platform.champion(model),
            "windows": lambda: platform.monitor.ListWindows(mpb.ListWindowsRequest(model_name=model, page_size=20),
                                                            timeout=3),
            "runs": lambda: platform.trainer.ListRuns(tpb.ListRunsRequest(model_name=model, page_size=10), timeout=3),
            "evaluations": lambda: platform.evaluator.ListEvaluations(
                epb.ListEvaluationsRequest(model_name=model, page_size=10), timeout=3),
        }
        results = await asyncio.gather(*(call() for call in calls.values()), return_exceptions=True)
        errors: dict[str, str] = {}
        for name, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                code = getattr(result, "code", None)
                errors[name] = (f"{code().name}: {result.details()}" if callable(code) else repr(result))[:300]
                continue
            if name == "champion":
                self.data["champion"] = result or None
            elif name == "windows":
                self.data["windows"] = [_window_summary(w) for w in as_dicts(result.windows)]
            elif name == "runs":
                self.data["runs"] = [_run_summary(r) for r in as_dicts(result.runs)]
            else:
                self.data["evaluations"] = [_evaluation_summary(e) for e in as_dicts(result.evaluations)]
        self.data["errors"] = errors
        self.data["refreshed_at"] = time.time()


def _window_summary(w: dict[str, Any]) -> dict[str, Any]:
    model = w.get("model", {})
    return {"window_id": w.get("window_id"), "version": int(model.get("version", 0)),
            "sequence": int(w.get("sequence", 0)), "state": w.get("state", "").removeprefix("WINDOW_STATE_"),
            "start": w.get("start"), "end": w.get("end"), "rows": int(w.get("rows", 0)),
            "labelled_rows": int(w.get("labelled_rows", 0)), "drifted_share": w.get("drifted_share", 0.0),
            "drifted": w.get("drifted", False),
            "features": {f["feature"]: {"score": f.get("score", 0.0), "drifted": f.get("drifted", False),
                                        "method": f.get("method", "")} for f in w.get("features", [])},
            "performance": w.get("performance", {})}


def _run_summary(r: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": r.get("run_id"), "status": r.get("status", "").removeprefix("RUN_STATUS_"),
            "reason": r.get("reason", "").removeprefix("RETRAIN_REASON_"),
            "registered_version": int(r.get("registered_version", 0)),
            "metrics": {k: v for k, v in r.get("metrics", {}).items() if k in ("roc_auc", "pr_auc", "f1")},
            "created_at": r.get("created_at"), "failure_reason": r.get("failure_reason", "")}


def _evaluation_summary(e: dict[str, Any]) -> dict[str, Any]:
    return {"evaluation_id": e.get("evaluation_id"), "candidate_version": int(e.get("candidate_version", 0)),
            "baseline_version": int(e.get("baseline_version", 0)),
            "verdict": e.get("verdict", "").removeprefix("EVALUATION_VERDICT_"),
            "checks": [{"name": c.get("name"), "passed": c.get("passed", False)} for c in e.get("checks", [])],
            "completed_at": e.get("completed_at")}


def status_document(driver_status: dict[str, Any], platform: dict[str, Any]) -> dict[str, Any]:
    """The `/api/status` JSON: the driver's view plus the platform's, with the events split by kind."""
    events = driver_status.get("events", [])

    def of(topic: str) -> list[dict[str, Any]]:
        return [e for e in events if e["topic"] == topic][::-1]

    stats = driver_status["stats"]
    return {
        "model": driver_status["model"], "session": driver_status["session"], "phase": driver_status["phase"],
        "drift": driver_status["drift"], "time": driver_status["time"],
        "serving": {"champion": platform.get("champion"), "answered_by": stats["serving_version"] or None},
        "accuracy": {"window_size": stats["window_size"], "window": stats["window"], "by_phase": stats["by_phase"],
                     "by_version": stats["by_version"], "by_phase_version": stats["by_phase_version"],
                     "points": stats["series"]},
        "counts": {"scored": stats["scored"], "unscored": stats["unscored"], "labels_sent": stats["labels_sent"],
                   "labels_pending": driver_status["pending_labels"]},
        "markers": driver_status["markers"],
        "drift_windows": platform.get("windows", []),
        "alerts": of("drift.detected"),
        "retraining": {"requests": of("retrain.requests"), "runs": platform.get("runs", [])},
        "evaluations": {"verdicts": platform.get("evaluations", []), "events": of("evaluations.completed")},
        "registered": of("models.registered"),
        "promotions": of("models.promoted"),
        "unavailable": platform.get("errors", {}),
        "refreshed_at": platform.get("refreshed_at"),
    }


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_page(doc: dict[str, Any], refresh_seconds: int = 3) -> str:
    """The HTML page of a status document (no external assets)."""
    w = doc["accuracy"]["window"]
    svg = accuracy_svg(doc["accuracy"]["points"], doc["markers"])
    unavailable = doc["unavailable"]

    def note(source: str, what: str) -> str:
        return (f'<p class="down">{html.escape(what)} not reachable: {html.escape(unavailable[source])}</p>'
                if source in unavailable else "")

    windows = [[x["version"], x["sequence"], x["state"], x["rows"], x["labelled_rows"], x["drifted_share"],
                "yes" if x["drifted"] else "no",
                ", ".join(f"{k} {v['score']:.2f}{'*' if v['drifted'] else ''}" for k, v in
                          sorted(x["features"].items(), key=lambda kv: -kv[1]["score"])[:4])]
               for x in doc["drift_windows"][:10]]
    runs = [[r["run_id"][:8] if r["run_id"] else "", r["status"], r["reason"], r["registered_version"] or "",
             r["metrics"].get("roc_auc"), r["failure_reason"][:80]] for r in doc["retraining"]["runs"]]
    verdicts = [[f"v{e['candidate_version']} vs v{e['baseline_version']}", e["verdict"],
                 ", ".join(c["name"] for c in e["checks"] if not c["passed"]) or "-"]
                for e in doc["evaluations"]["verdicts"]]
    phases = [[k, v["n"], v["accuracy"], v["f1"], v["recall"]] for k, v in doc["accuracy"]["by_phase"].items()]
    versions = [[f"v{k}", v["n"], v["accuracy"], v["f1"], v["recall"]]
                for k, v in doc["accuracy"]["by_version"].items()]

    def events(items: list[dict[str, Any]], empty: str) -> str:
        if not items:
            return f'<p class="empty">{html.escape(empty)}</p>'
        return "<ul>" + "".join(f"<li>{time.strftime('%H:%M:%S', time.localtime(e['at']))} "
                                f"{html.escape(e['text'])}</li>" for e in items[:15]) + "</ul>"

    serving = doc["serving"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh_seconds}">
<title>Flywheel payments demo: {html.escape(doc['model'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }} h1 {{ font-size: 1.3em; }}
h2 {{ font-size: 1.05em; margin-top: 1.4em; }} table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }} .down {{ color: #b00; }}
.empty {{ color: #888; }} .big {{ font-size: 1.6em; font-weight: bold; }} .grid {{ display: flex; gap: 3em; }}
</style></head><body>
<h1>Flywheel payments demo: model <code>{html.escape(doc['model'])}</code></h1>
<div class="grid">
<div>serving (registry champion)<div class="big" id="champion">v{_fmt(serving['champion'])}</div>
answered by v{_fmt(serving['answered_by'])}</div>
<div>phase<div class="big">{html.escape(doc['phase'])}</div>drift: {html.escape(doc['drift'])}</div>
<div>last {_fmt(w['n'])} payments<div class="big">accuracy {_fmt(w['accuracy'])}</div>
F1 {_fmt(w['f1'])}, fraud recall {_fmt(w['recall'])}</div>
<div>counts<div>scored {doc['counts']['scored']}, not scored {doc['counts']['unscored']}</div>
<div>labels sent {doc['counts']['labels_sent']}, pending {doc['counts']['labels_pending']}</div></div>
</div>
<h2>Accuracy over time (windowed)</h2>{svg}
<div class="grid"><div><h3>per phase</h3>{_table(["phase", "n", "accuracy", "f1", "recall"], phases, "none yet")}
</div><div><h3>per serving version</h3>
{_table(["version", "n", "accuracy", "f1", "recall"], versions, "none yet")}</div></div>
<h2>Drift per window (monitor)</h2>{note("windows", "monitor")}
{_table(["version", "#", "state", "rows", "labelled", "drifted share", "drifted", "top features"], windows,
        "no closed windows yet")}
<h2>Alerts</h2>{events(doc['alerts'], "no drift alerts")}
<h2>Retraining</h2>{events(doc['retraining']['requests'], "no retrain requests")}{note("runs", "trainer")}
{_table(["run", "status", "reason", "version", "roc_auc", "failure"], runs, "no runs")}
<h2>Evaluations</h2>{note("evaluations", "evaluator")}
{_table(["candidate", "verdict", "failed checks"], verdicts, "no evaluations")}
{events(doc['evaluations']['events'], "no evaluations.completed events seen")}
<h2>Promotions</h2>{events(doc['promotions'], "no promotions seen")}
<p class="empty">JSON: <a href="/api/status">/api/status</a> &middot; <a href="/plot.svg">/plot.svg</a>
&middot; <a href="/metrics">/metrics</a></p>
</body></html>"""


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every HTTP error answers JSON (`{"error": ...}`) with its status code."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "path": request.path}, status=exc.status)


class StatusPage:
    """The aiohttp server of the page; `port=0` in tests picks a free port (see `.port` after start)."""

    def __init__(self, driver: Any, *, port: int = 8090, host: str = "127.0.0.1",
                 refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.driver = driver
        self.host = host
        self.port = port
        self.view = PlatformView(driver)
        self.refresh_seconds = refresh_seconds
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None

    def document(self) -> dict[str, Any]:
        return status_document(self.driver.status(), self.view.data)

    async def _status(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.document()), content_type="application/json")

    async def _page(self, _: web.Request) -> web.Response:
        return web.Response(text=render_page(self.document()), content_type="text/html")

    async def _plot(self, _: web.Request) -> web.Response:
        status = self.driver.status()
        return web.Response(text=accuracy_svg(status["stats"]["series"], status["markers"]),
                            content_type="image/svg+xml")

    async def _metrics(self, _: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.view.refresh()
            except Exception:  # the page must outlive any one refresh
                log.exception("status refresh failed")
            await asyncio.sleep(self.refresh_seconds)

    async def start(self) -> None:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/plot.svg", self._plot)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._task = asyncio.create_task(self._refresh_loop(), name="status-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._runner is not None:
            await self._runner.cleanup()
