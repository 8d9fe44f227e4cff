"""Starting real services in a test: the settings every one shares, the model specs written for the tests
(tests/fixtures/specs) and, for tests of the payments demo itself, the demo's model spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURE_SPECS = Path(__file__).parent / "fixtures" / "specs"


def shared_settings(infra: Any) -> dict[str, Any]:
    """Settings every service takes on the session's embedded stack: free ports, no metrics server, the
    session's `service` token for calls to other services."""
    return dict(kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home,
                grpc_port=0, metrics_port=0, token=infra.tokens.service)


def fixture_spec(name: str = "fraud") -> dict[str, Any]:
    """A model spec of tests/fixtures/specs, parsed (a fresh dict: change it freely)."""
    return yaml.safe_load((FIXTURE_SPECS / f"{name}.yaml").read_text())


def fraud_spec_dir(tmp_path_factory: pytest.TempPathFactory, model: str) -> Path:
    """A specs directory holding the payments demo's fraud model spec under the name `model`."""
    import payments_demo

    spec = yaml.safe_load(payments_demo.FRAUD_MODEL_SPEC.read_text())
    spec["name"] = model
    specs = tmp_path_factory.mktemp(f"specs-{model}")
    (specs / f"{model}.yaml").write_text(yaml.safe_dump(spec))
    return specs
