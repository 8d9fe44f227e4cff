"""`make run` restarts a service that crashed (here: SIGKILL), keeps the others running, and the
platform goes on working: the restarted registry takes new versions and publishes their events.
A crash loop (here: 2 crashes within the window) stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common.launcher import installed_services
from flywheel.common.topics import MODELS_REGISTERED
from flywheel.proto.events.v1 import models_pb2
from tests.e2e.test_make_run import cli, launcher_env, start_launcher
from tests.kafka_helpers import read_records

pytestmark = pytest.mark.integration


class Console:
    """Keeps reading the launcher's output (its children log there too, so it must be drained)."""

    def __init__(self, proc: subprocess.Popen, lines: list[str]) -> None:
        self.proc = proc
        self.lines = list(lines)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """The first launcher line matching `pattern`, waiting for it to be printed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith("flywheel: ") and (match := regex.search(line)):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    mine = "\n".join(line for line in self.lines if line.startswith("flywheel"))
                    raise AssertionError(f"launcher never printed /{pattern}/; it printed:\n{mine}")
                self._changed.wait(min(left, 1.0))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def service_pids(launcher: subprocess.Popen) -> dict[str, int]:
    pids = {}
    for child in psutil.Process(launcher.pid).children():
        cmdline = child.cmdline()
        if len(cmdline) >= 3 and cmdline[1] == "-m" and cmdline[2].startswith("flywheel."):
            pids[cmdline[2].removeprefix("flywheel.")] = child.pid
    return pids


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_make_run_restarts_a_killed_service_and_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    env, ports = launcher_env()
    env["FLYWHEEL_LOG_LEVEL"] = "WARNING"
    address = f"127.0.0.1:{ports['registry']}"
    home = tmp_path / "home"
    (tmp_path / "m.bin").write_bytes(b"weights")

    proc, lines = start_launcher(home, env, "--max-crashes", "2", "--crash-window", "300")
    console = Console(proc, lines)
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        assert "registered demo:1" in cli(address, home, "register", "demo", str(tmp_path / "m.bin"))
        before = service_pids(proc)
        assert set(before) == set(installed_services()), before

        os.kill(before["registry"], signal.SIGKILL)
        console.wait_for(r"^flywheel: registry was killed by SIGKILL; restarting it in 1s \(crash 1 of 2 allowed")
        restarted = int(console.wait_for(r"^flywheel: registry restarted \(pid (\d+)\)").group(1))
        console.wait_for(rf"^flywheel: registry serving again on {re.escape(address)}$")

        assert proc.poll() is None  # the launcher did not stop
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
        after = service_pids(proc)
        assert after["registry"] == restarted != before["registry"]
        assert {n: p for n, p in after.items() if n != "registry"} == \
            {n: p for n, p in before.items() if n != "registry"}  # the others ran on, untouched

        # Work goes on through the restarted registry: a new version, and its event on the topic.
        assert "registered demo:2" in cli(address, home, "register", "demo", str(tmp_path / "m.bin"))
        bootstrap = json.loads((home / "stack.json").read_text())["kafka_bootstrap"]

        def versions(records: list) -> list[int]:  # type: ignore[type-arg]
            found = [models_pb2.ModelRegistered.FromString(r.value).model for r in records]
            return sorted(m.version for m in found if m.name == "demo")
        records = asyncio.run(read_records(bootstrap, MODELS_REGISTERED.name,
                                           until=lambda rs: versions(rs) == [1, 2], timeout=60))
        assert versions(records) == [1, 2]

        # The second crash within the window is, with --max-crashes 2, a crash loop: everything stops.
        children.append(psutil.Process(restarted))
        os.kill(restarted, signal.SIGKILL)
        console.wait_for(r"^flywheel: registry was killed by SIGKILL; 2 crashes within 300s is a crash loop: "
                         r"giving up, stopping$")
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        console.join(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=10)
    assert code == 1
    assert not alive, f"still running after giving up: {[p.cmdline() for p in alive]}"
    assert [line for line in console.lines if line.startswith("flywheel:")][-1] == "flywheel: stopped"
    print("\n".join(line for line in console.lines if line.startswith("flywheel")))  # shown on failure or with -rP
