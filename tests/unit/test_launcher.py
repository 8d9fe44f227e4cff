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
