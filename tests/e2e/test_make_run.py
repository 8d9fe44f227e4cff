"""`make run` as a user sees it: everything starts, answers, stops on Ctrl-C, and keeps its data."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flywheel.common.embedded import free_port
from flywheel.common.launcher import installed_services

pytestmark = pytest.mark.integration


def start_launcher(home: Path, env: dict[str, str], *options: str) -> tuple[subprocess.Popen, list[str]]:
    # --no-demo: the payments driver trains a model first; its own tests cover it (tests/integration).
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.common.launcher", "--home", str(home), "--no-demo",
                             *options],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "flywheel: ready" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("launcher did not become ready:\n" + "\n".join(lines))


def cli(address: str, home: Path, *args: str, check: bool = True) -> str:
    """`flywheel registry --address ADDRESS ARGS` as a user runs it next to `make run`: with FLYWHEEL_HOME
    set, it authenticates with the admin token the launcher wrote there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    result = subprocess.run([sys.executable, "-m", "flywheel.common.cli", "registry", "--address", address, *args],
                            capture_output=True, text=True, timeout=60,
                            env={**env, "COLUMNS": "200", "FLYWHEEL_HOME": str(home)})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stop(proc: subprocess.Popen) -> list[str]:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the launcher should have started service processes"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
    return out.splitlines()


def launcher_env() -> tuple[dict[str, str], dict[str, int]]:
    """The caller's environment without FLYWHEEL_*, plus a free port for every port setting of every
    service (gRPC, metrics, inference's REST), so a running `make run` or another test does not
    collide; and each service's gRPC port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    grpc_ports = {}
    for name, settings_class in installed_services().items():
        for field in settings_class.model_fields:
            if field.endswith("_port"):
                port = free_port()
                env[f"{settings_class.model_config['env_prefix']}{field}".upper()] = str(port)
                if field == "grpc_port":
                    grpc_ports[name] = port
    return env, grpc_ports


def check_review_login(env: dict[str, str], lines: list[str], home: Path) -> None:
    """The review app (HTTP, no gRPC) is ready, and the demo login the launcher printed lets a person in."""
    if "FLYWHEEL_REVIEW_HTTP_PORT" not in env:
        return  # the review app is not installed
    port = int(env["FLYWHEEL_REVIEW_HTTP_PORT"])
    assert any(f"{'review':<12} http http://127.0.0.1:{port}" in line for line in lines), lines
    [login] = [line for line in lines if "as reviewer /" in line]
    password = login.split("as reviewer / ", 1)[1].split()[0]
    assert stat.S_IMODE((home / "review-demo-logins.json").stat().st_mode) == 0o600
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        form = http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None, form.text
        done = http.post("/login", data={"username": "reviewer", "password": password,
                                         "csrf_token": token.group(1), "next": "/"})
        assert done.status_code == 303 and done.headers["location"] == "/", done.text
        assert "<h1>Queues</h1>" in http.get("/").text


def test_make_run_serves_answers_and_stops_cleanly(tmp_path: Path) -> None:
    env, ports = launcher_env()
    address = f"127.0.0.1:{ports['registry']}"
    home = tmp_path / "home"

    proc, lines = start_launcher(home, env)
    try:
        for name, port in ports.items():
            assert any(f"{name:<12} grpc 127.0.0.1:{port}" in line for line in lines), lines
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="flywheel.registry.v1.RegistryService"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name for r in reflection for s in r.list_services_response.service}
            assert "flywheel.registry.v1.RegistryService" in names
        admin_token = home / "admin.token"
        assert any(str(admin_token) in line for line in lines), lines  # the launcher says where it is
        assert stat.S_IMODE(admin_token.stat().st_mode) == 0o600
        # The one model on a first start: the embedder registered the shipped all-MiniLM-L6-v2 (no champion).
        assert "all-minilm-l6-v2" in cli(address, home, "list")
        # Without the token the registry refuses (another home has none).
        assert "UNAUTHENTICATED" in cli(address, tmp_path / "elsewhere", "list", check=False)
        check_review_login(env, lines, home)
        (tmp_path / "m.bin").write_bytes(b"weights that must survive a restart")
        assert "registered demo:1" in cli(address, home, "register", "demo", str(tmp_path / "m.bin"))
    finally:
        out = stop(proc)
    assert out[-1] == "flywheel: stopped"
    assert not (home / "postgres" / "postmaster.pid").exists()

    proc, _ = start_launcher(home, env)  # same data directory: the model is still there
    try:
        assert "demo" in cli(address, home, "list")  # and the admin token still works
        versions = cli(address, home, "list", "all-minilm-l6-v2")
        assert "│ 1 " in versions and "│ 2 " not in versions  # the embedder did not register it again
    finally:
        stop(proc)
