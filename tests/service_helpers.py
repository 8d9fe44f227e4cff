"""Starting real services in a test: the settings every one shares, the model specs written for the tests
(tests/fixtures/specs) and, for tests of the payments demo itself, the demo's model spec."""

from __future__ import annotations

import asyncio
import contextlib
import io
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


async def stop_in_reverse(apps: list[Any], timeout: float = 90.0) -> None:
    """Stop `apps` last started first. A stop that has not ended after `timeout` seconds is cancelled, the others
    are still stopped, and then the test fails naming the service and showing every asyncio task's stack at that
    moment (a hung stop is a bug in that service: this says where it waits)."""
    hung: list[str] = []
    for app in reversed(apps):
        stopping = asyncio.create_task(app.stop(), name=f"{type(app).__name__}.stop")
        done, _ = await asyncio.wait({stopping}, timeout=timeout)
        if not done:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                if not task.done():
                    task.print_stack(limit=12, file=stacks)
            hung.append(f"{type(app).__name__}.stop() still running after {timeout:.0f}s; the tasks:\n"
                        f"{stacks.getvalue()}")
            stopping.cancel()
            with contextlib.suppress(BaseException):
                await stopping
        else:
            stopping.result()
    assert not hung, "\n".join(hung)
