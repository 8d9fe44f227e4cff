"""`flywheel registry ...` as a user runs it: a separate process talking gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from functools import partial
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


async def flywheel(app, token: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """The CLI as a user runs it, with FLYWHEEL_TOKEN set."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.common.cli", "registry", "--address", app.address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=cwd,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "FLYWHEEL_TOKEN": token})
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_cli_register_list_promote_rollback_download(infra, registry_app, tmp_path: Path, unique: str) -> None:  # type: ignore[no-untyped-def]
    cli = partial(flywheel, registry_app, infra.tokens.admin)
    name = f"cli-{unique}"
    weights = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "model.pt").write_bytes(weights)
    code, out = await cli("register", name, str(tmp_path / "model.pt"), "--framework", "pytorch",
                               "--metric", "roc_auc=0.93", "--tag", "team=risk")
    assert code == 0, out
    assert f"registered {name}:1" in out and hashlib.sha256(weights).hexdigest() in out
    code, out = await cli("register", name, str(tmp_path / "model.pt"), "--parent", "1")
    assert code == 0, out

    code, out = await cli("promote", name, "1")
    assert code == 0 and f"{name}@champion -> 1" in out, out
    code, out = await cli("promote", name, "2")
    assert code == 0 and "(was 1)" in out, out
    code, out = await cli("list")
    assert code == 0 and name in out and "champion=2" in out and "previous=1" in out, out
    code, out = await cli("list", name)
    assert code == 0 and "roc_auc=0.93" in out, out

    code, out = await cli("rollback", name)
    assert code == 0 and f"{name}@champion -> 1 (was 2)" in out, out
    code, out = await cli("show", name)  # = name@champion
    assert code == 0 and f"{name}:1 (champion)" in out and "pytorch" in out, out

    code, out = await cli("download", f"{name}:2", "-o", str(tmp_path / "copy.pt"))
    assert code == 0, out
    assert (tmp_path / "copy.pt").read_bytes() == weights

    code, out = await cli("policy", name, "automatic")
    assert code == 0 and f"{name}: automatic" in out, out


async def test_cli_errors_are_one_clear_line(infra, registry_app, unique: str) -> None:  # type: ignore[no-untyped-def]
    cli = partial(flywheel, registry_app, infra.tokens.admin)
    code, out = await cli("show", f"missing-{unique}:3")
    assert code == 1 and "NOT_FOUND" in out and f"missing-{unique}" in out and "Traceback" not in out, out
    code, out = await cli("show", "model:notanumber")
    assert code == 2 and "is not a number" in out and "Traceback" not in out, out
    # A token without the needed role: one line naming the principal and the role it lacks.
    code, out = await flywheel(registry_app, infra.tokens.reader, "promote", f"missing-{unique}", "1")
    assert code == 1 and "PERMISSION_DENIED" in out and "needs role admin or operator" in out, out
    assert "Traceback" not in out, out
