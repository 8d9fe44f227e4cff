"""Benchmark `loop`: the closed loop as `make run` plays it, measured from the outside.

Two launches of the real launcher (`python -m flywheel.common.launcher`, every service in its own
process on its own embedded broker + database, exactly what `make run` starts) with the payments
driver as a separate process, so the numbers are those a user sees:

1. **drift run**: stable traffic, then the drift onset. Measured: the time from the onset to each
   step of the loop (drift.detected, retrain.requests, models.registered, evaluations.completed,
   models.promoted) and to the first payment answered by the new champion; the windowed accuracy
   before and after; and, at steady state before the onset, the resident memory of every process
   (each service, the broker, the database with its backends, the driver).
2. **stable run**: stable traffic only, long enough for many monitor windows: the false alarm
   count (drift.detected events) per 100 analyzed windows.

The peer for the memory numbers is the embedded broker + database alone (what any deployment of
the platform pays before a service starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import BenchResult, Context, markdown_table, median, rounded
from flywheel.common.embedded import free_port
from flywheel.common.launcher import installed_services

NAME = "loop"
MiB = 1024 * 1024
# Loop events the driver narrates, in the order the loop emits them.
STEPS = ("drift.detected", "retrain.requests", "models.registered", "evaluations.completed", "models.promoted")
# The monitor's default window (predictions); the driver's defaults put two simulated days in one.
WINDOW_ROWS = 500
# Drifted payments scored by the new champion before its recovery is measured: F1 of a ~7% label
# over fewer rows swings by +-0.1.
RECOVERY_ROWS = 3000


@dataclass
class Launch:
    """A launcher + driver pair on free ports in a scratch home."""

    home: Path
    env: dict[str, str]
    status_port: int
    launcher: subprocess.Popen | None = None
    driver: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/api/status", timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def processes(self) -> list[psutil.Process]:
        """The launcher, the driver and everything they started, plus the embedded PostgreSQL: `pg_ctl`
        daemonizes it, so its postmaster (found by its data directory in this launch's home) and
        backends are not the launcher's children."""
        roots = [psutil.Process(p.pid) for p in (self.launcher, self.driver) if p is not None and p.poll() is None]
        for process in psutil.process_iter(["cmdline"]):
            if str(self.home) in " ".join(process.info["cmdline"] or []) and process.pid not in {r.pid for r in roots}:
                roots.append(process)
        found: dict[int, psutil.Process] = {}
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                for process in (root, *root.children(recursive=True)):
                    found[process.pid] = process
        return list(found.values())


def _environment(home: Path) -> tuple[dict[str, str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_HOME"] = str(home)
    for name in installed_services():
        port = free_port()
        env[f"FLYWHEEL_{name.upper()}_GRPC_PORT"] = str(port)
        env[f"FLYWHEEL_{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
        env[f"FLYWHEEL_{name.upper()}_METRICS_PORT"] = str(free_port())
    env.update({"FLYWHEEL_INFERENCE_HTTP_PORT": str(free_port())})
    status_port = free_port()
    env["FLYWHEEL_DEMO_STATUS_PORT"] = str(status_port)
    return env, status_port


@contextlib.contextmanager
def launched(driver_args: list[str], ready_timeout: float = 180.0) -> Iterator[Launch]:
    """The launcher (services only) until ready, then the driver; both stopped with SIGINT at the end."""
    with tempfile.TemporaryDirectory(prefix="flywheel-loop-") as scratch:
        home = Path(scratch) / "home"
        env, status_port = _environment(home)
        launch = Launch(home, env, status_port)
        launch.launcher = subprocess.Popen(
            [sys.executable, "-m", "flywheel.common.launcher", "--home", str(home), "--no-demo"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert launch.launcher.stdout is not None
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                line = launch.launcher.stdout.readline()
                if not line:
                    raise RuntimeError("launcher exited:\n" + "\n".join(launch.log[-30:]))
                launch.log.append(line.rstrip())
                if "flywheel: ready" in line:
                    break
            else:
                raise RuntimeError("launcher not ready in time:\n" + "\n".join(launch.log[-30:]))
            # The driver plays the project with the admin token `make run` wrote (it trains, promotes, predicts).
            env["FLYWHEEL_TOKEN"] = (home / "admin.token").read_text().strip()
            launch.driver = subprocess.Popen([sys.executable, "-m", "payments_demo.live", *driver_args], env=env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            yield launch
        finally:
            for proc in (launch.driver, launch.launcher):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def role(process: psutil.Process) -> str:
    """Which part of `make run` a process is: a service, the broker, the database, the driver."""
    try:
        cmd = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    text = " ".join(cmd)
    if "-m" in cmd:
        module = cmd[cmd.index("-m") + 1]
        if module.startswith("flywheel.") and module != "flywheel.common.launcher":
            return module.removeprefix("flywheel.")
        return {"flywheel.common.launcher": "launcher (+ embedded stack control)",
                "payments_demo.live": "demo driver"}.get(module, module)
    if "tansu" in text:
        return "broker (tansu)"
    if "postgres" in text or "postgres" in process.name():
        return "database (postgres)"
    return process.name()


def resident_memory(launch: Launch, samples: int = 5, every: float = 2.0) -> dict[str, dict[str, float]]:
    """Per role, the median over a few samples of RSS and PSS (MiB), summed over the role's processes.
    RSS counts shared pages in every process that maps them (PostgreSQL's shared buffers once per
    backend), so only PSS (each shared page split among its users) adds up to a true total."""
    series: dict[str, dict[str, list[float]]] = {}
    for i in range(samples):
        totals: dict[str, dict[str, float]] = {}
        for process in launch.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = process.memory_full_info()
                row = totals.setdefault(role(process), {"rss": 0.0, "pss": 0.0})
                row["rss"] += info.rss / MiB
                row["pss"] += info.pss / MiB
        for name, row in totals.items():
            for kind, value in row.items():
                series.setdefault(name, {}).setdefault(kind, []).append(value)
        if i + 1 < samples:
            time.sleep(every)
    return {name: {kind: rounded(median(values)) for kind, values in kinds.items()}
            for name, kinds in sorted(series.items())}


def wait_status(launch: Launch, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if launch.driver is not None and launch.driver.poll() is not None:
            raise RuntimeError(f"the driver exited with {launch.driver.returncode} while waiting for {what}")
        last = launch.status()
        if last is not None and predicate(last):
            return last
        time.sleep(1.0)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s; last status: {json.dumps(last)[:2000]}")


def loop_events(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every loop event the driver heard (each with `topic` and `at`, epoch seconds)."""
    return [*status.get("alerts", []), *status.get("retraining", {}).get("requests", []),
            *status.get("registered", []), *status.get("evaluations", {}).get("events", []),
            *status.get("promotions", [])]


def first_event(status: dict[str, Any], topic: str, after: float) -> float | None:
    times = [e["at"] for e in loop_events(status) if e.get("topic") == topic and e["at"] >= after]
    return min(times) if times else None


def answered_by_new(status: dict[str, Any], champion: int, onset: float) -> float | None:
    times = [p["t"] for p in status.get("accuracy", {}).get("points", [])
             if p.get("version", 0) > champion and p["t"] >= onset]
    return min(times) if times else None


def analyzed_windows(launch: Launch, model: str) -> int:
    """Closed windows of `model` the monitor has analyzed (all versions), over its gRPC API."""
    import grpc

    from flywheel.proto.monitor.v1 import monitor_service_pb2 as mpb
    from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as mpb_grpc

    with grpc.insecure_channel(launch.env["FLYWHEEL_MONITOR_ADDR"]) as channel:
        stub = mpb_grpc.MonitorServiceStub(channel)
        count, token = 0, ""
        while True:
            page = stub.ListWindows(mpb.ListWindowsRequest(model_name=model, page_size=500, page_token=token),
                                    timeout=30, metadata=(("authorization", f"Bearer {launch.env['FLYWHEEL_TOKEN']}"),))
            count += sum(1 for w in page.windows if w.state == mpb.WINDOW_STATE_ANALYZED)
            token = page.next_page_token
            if not token:
                return count


def drift_run(ctx: Context) -> dict[str, Any]:
    """`make run` with the demo's defaults (the scenario a user watches)."""
    args = ["--status-every", "0"]
    with launched(args) as launch:
        with ctx.steps.step("drift run: bootstrap (history, first training, champion)"):
            # The champion is the version that answered the first stable payments (the status page's own
            # view of the registry is refreshed in the background and may still be empty).
            status = wait_status(launch, lambda s: s.get("phase") == "stable" and s["serving"]["answered_by"],
                                 600, "live stable traffic answered by the first champion")
        with ctx.steps.step("drift run: resident memory at steady state"):
            time.sleep(10)
            memory = resident_memory(launch)
        with ctx.steps.step("drift run: onset -> new champion serving"):
            onset = status["time"]["onset_wall"]
            champion = int(status["serving"]["answered_by"])
            status = wait_status(launch, lambda s: answered_by_new(s, champion, onset) is not None, 900,
                                 "a payment answered by a new champion")
        served = answered_by_new(status, champion, onset)
        assert served is not None
        with ctx.steps.step("drift run: the new champion on drifted traffic"):
            new = status["serving"]["answered_by"]
            status = wait_status(launch, lambda s: (s["accuracy"]["by_version"].get(str(new)) or {}).get("n", 0)
                                 >= RECOVERY_ROWS, 600, "drifted payments scored by the new champion")
        steps = {topic: first_event(status, topic, onset) for topic in STEPS}
        stable_alarms = [e["text"] for e in status.get("alerts", []) if e["at"] < onset]
        return {"onset_wall": onset, "seconds_to": {t: rounded(v - onset) if v else None for t, v in steps.items()},
                "onset_to_new_champion_serving_s": rounded(served - onset), "memory_mib": memory,
                "false_alarms_before_onset": len(stable_alarms),
                "alarms": [e["text"] for e in status.get("alerts", [])],
                "events": sorted(({"topic": e["topic"], "at": e["at"], "text": e["text"]} for e in loop_events(status)),
                                 key=lambda e: e["at"]), "old_champion": champion, "new_champion": new,
                "accuracy_by_phase": status["accuracy"]["by_phase"],
                "accuracy_by_phase_version": status["accuracy"]["by_phase_version"],
                "accuracy_by_version": status["accuracy"]["by_version"]}


def stable_run(ctx: Context, windows: int) -> dict[str, Any]:
    """Stable traffic only, at twice the demo's pace (the same 250 payments per simulated day)."""
    rate = 100.0
    seconds = windows * WINDOW_ROWS / rate
    args = ["--rate", str(rate), "--day-seconds", "2.5", "--drift", "none", "--stable-days", "1000",
            "--status-every", "0"]
    with launched(args) as launch:
        with ctx.steps.step("stable run: bootstrap"):
            wait_status(launch, lambda s: s.get("phase") == "stable", 600, "live stable traffic")
        with ctx.steps.step(f"stable run: {windows} windows of {WINDOW_ROWS} predictions ({seconds:.0f}s)"):
            deadline = time.monotonic() + seconds * 3 + 120
            analyzed = 0
            while analyzed < windows and time.monotonic() < deadline:
                time.sleep(5)
                with contextlib.suppress(Exception):
                    analyzed = analyzed_windows(launch, "fraud")
            status = launch.status() or {}
        alarms = status.get("alerts", [])
        return {"windows": analyzed, "false_alarms": len(alarms),
                "false_alarms_per_100_windows": rounded(100 * len(alarms) / max(analyzed, 1), 2),
                "alarms": [alarm["text"] for alarm in alarms]}


RECOVERY_METRICS = ("f1", "recall", "precision", "accuracy")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _f1_ratio(drift: dict[str, Any]) -> float:
    by = drift["accuracy_by_phase_version"]
    old = (by.get(f"drift/v{drift['old_champion']}") or {}).get("f1") or 0.0
    new = (by.get(f"drift/v{drift['new_champion']}") or {}).get("f1") or 0.0
    return rounded(new / old) if old else 0.0


async def run(ctx: Context) -> BenchResult:
    ctx.steps.begin(NAME, 5)
    drift = await asyncio.to_thread(drift_run, ctx)
    stable = await asyncio.to_thread(stable_run, ctx, 30 if ctx.quick else 100)
    memory = drift["memory_mib"]
    memory_rows = [[name, f"{m['rss']:.0f}", f"{m['pss']:.0f}"] for name, m in memory.items()]
    total = sum(m["pss"] for m in memory.values())
    stack = sum(m["pss"] for name, m in memory.items() if name.startswith(("broker", "database")))
    steps_rows = [[topic, "" if s is None else f"{s:.1f}"] for topic, s in drift["seconds_to"].items()]
    steps_rows.append(["first payment answered by the new champion", f"{drift['onset_to_new_champion_serving_s']:.1f}"])
    recovery_rows = []
    for label, version in (("old champion", drift["old_champion"]), ("new champion", drift["new_champion"])):
        m = drift["accuracy_by_phase_version"].get(f"drift/v{version}") or {}
        recovery_rows.append([f"{label} (v{version})", m.get("n", 0), *(_fmt(m.get(k)) for k in RECOVERY_METRICS)])
    tables = [
        "## Drift onset -> new champion (seconds after the onset, target < 120)\n\n"
        + markdown_table(["step", "s"], steps_rows, right=[1]),
        "## Drifted traffic: old vs new champion (as the driver scored it)\n\n"
        + markdown_table(["model", "payments", *RECOVERY_METRICS], recovery_rows, right=[1, 2, 3, 4, 5]),
        "## False alarms on a stable run (target < 1 per 100 windows)\n\n"
        + markdown_table(["windows", "drift.detected", "per 100 windows"],
                         [[stable["windows"], stable["false_alarms"], stable["false_alarms_per_100_windows"]]],
                         right=[0, 1, 2]),
        "## Resident memory of `make run` at steady state (MiB, median of 5 samples; PSS shares shared pages "
        "among the processes that map them, so it adds up)\n\n"
        + markdown_table(["process", "RSS MiB", "PSS MiB"], [*memory_rows, ["total (PSS)", "", f"{total:.0f}"]],
                         right=[1, 2]),
    ]
    return BenchResult(
        name=NAME, title="Closed loop: drift onset to new champion, false alarms, memory of make run",
        results=[{"run": "drift", **drift}, {"run": "stable", **stable}],
        ratios={"onset_to_champion_vs_target_120s": rounded(drift["onset_to_new_champion_serving_s"] / 120.0),
                "new_vs_old_champion_f1_on_drifted_traffic": _f1_ratio(drift),
                "false_alarms_per_100_windows": stable["false_alarms_per_100_windows"],
                "memory_total_vs_broker_and_database": rounded(total / stack) if stack else 0.0},
        notes=("Two launches of the real launcher (every service in its own process, embedded broker + database) "
               "with the payments driver as a separate process; times are wall seconds after the driver's drift "
               f"onset, read from the driver's status API. Monitor windows of {WINDOW_ROWS} predictions."),
        tables=tables)
