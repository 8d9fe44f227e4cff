"""`make run`'s launcher: installed projects configure the services through their settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

from flywheel.common.launcher import apply_project_settings


@dataclass
class FakeEntryPoint:
    name: str
    settings: dict[str, str]

    def load(self) -> Callable[[], dict[str, str]]:
        return lambda: dict(self.settings)


def test_project_settings_fill_the_environment_without_overriding_it(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"FLYWHEEL_TRAINER_SPECS_DIR": "/mine", "PATH": "/bin"}
    projects = [FakeEntryPoint("zeta", {"FLYWHEEL_EVALUATOR_SPECS_DIR": "/zeta", "FLYWHEEL_X": "z"}),
                FakeEntryPoint("alpha", {"FLYWHEEL_TRAINER_SPECS_DIR": "/alpha", "FLYWHEEL_X": "a"})]
    applied = apply_project_settings(env, projects)  # type: ignore[arg-type]
    # The environment wins, then projects in name order (the first to set a variable keeps it).
    assert applied == {"FLYWHEEL_X": "a", "FLYWHEEL_EVALUATOR_SPECS_DIR": "/zeta"}
    assert env == {"FLYWHEEL_TRAINER_SPECS_DIR": "/mine", "PATH": "/bin", **applied}
    out = capsys.readouterr().out
    assert "project alpha" in out and "FLYWHEEL_X=a" in out and "/zeta" in out and "/mine" not in out


def test_the_payments_project_entry_point_names_its_specs_and_feature_repo() -> None:
    pytest.importorskip("payments_demo")
    payments = EntryPoint(name="payments", value="payments_demo.project:settings", group="flywheel.projects")
    env: dict[str, str] = {}
    apply_project_settings(env, [payments])
    assert env["FLYWHEEL_TRAINER_SPECS_DIR"].endswith("payments_demo/models")
    assert env["FLYWHEEL_EVALUATOR_SPECS_DIR"] == env["FLYWHEEL_TRAINER_SPECS_DIR"]
    assert env["FLYWHEEL_FEATURESTORE_REPO"].endswith("payments_demo/feature_repo")


def test_http_readiness_answers_200_only_when_ready() -> None:
    """A service without gRPC (the review app) declares an HTTP readiness URL; the launcher waits for a 200."""
    import http.server
    import threading

    from flywheel.common.embedded import free_port
    from flywheel.common.launcher import is_ready
    from flywheel.common.settings import Readiness

    state = {"ready": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/readyz" and state["ready"] else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        readiness = Readiness("http", address, "/readyz")
        assert readiness.describe() == f"http http://{address}"
        assert not is_ready(readiness)
        state["ready"] = True
        assert is_ready(readiness)
        assert not is_ready(Readiness("http", address, "/elsewhere"))
    finally:
        server.shutdown()
        server.server_close()
    assert not is_ready(Readiness("http", f"127.0.0.1:{free_port()}", "/readyz"))


def test_settings_declare_grpc_readiness_by_default() -> None:
    from flywheel.common.settings import ServiceSettings

    class Grpc(ServiceSettings):
        grpc_host: str = "127.0.0.1"
        grpc_port: int = 50099

    settings = Grpc(kafka_bootstrap="k:9092", database_url="postgresql://x")
    assert settings.readiness().protocol == "grpc"
    assert settings.readiness().describe() == "grpc 127.0.0.1:50099"
    assert settings.console_notes() == []
