"""`flywheel.common.tasks`: a timeout that never swallows a cancellation, and a stop that ends its tasks even when
one swallows a cancellation anyway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path

import pytest

from flywheel.common.tasks import cancel_and_wait, within

REPO = Path(__file__).resolve().parents[2]


async def worker(wake: asyncio.Event, wait: str) -> None:
    """A scheduler's loop: wait for a wake-up or the poll interval, then look for work."""
    while True:
        with contextlib.suppress(TimeoutError):
            if wait == "within":
                await within(wake.wait(), 0.2)
            else:
                await asyncio.wait_for(wake.wait(), 0.2)
        wake.clear()


async def survivors(wait: str, tries: int = 10) -> int:
    """How many of `tries` workers outlive a cancel that lands in the iteration their wake-up completes."""
    survived = 0
    for _ in range(tries):
        wake = asyncio.Event()
        task = asyncio.create_task(worker(wake, wait))
        await asyncio.sleep(0.005)
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.3)
        if not done:
            survived += 1
            await cancel_and_wait([task])
    return survived


async def test_a_cancellation_as_the_wait_completes_stops_the_loop() -> None:
    # The control first: on this project's Python (3.11, pinned in libs/pyproject.toml) the same loop on
    # asyncio.wait_for outlives its cancel, so the harness really lands the cancel on the race.
    assert await survivors("wait_for") > 0
    assert await survivors("within") == 0


async def test_within_returns_the_result_or_times_out() -> None:
    assert await within(asyncio.sleep(0, result="done"), 1.0) == "done"
    assert await within(asyncio.sleep(0, result="no limit"), None) == "no limit"
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.01)


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_its_cancellation(
        caplog: pytest.LogCaptureFixture) -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # swallowed: goes on waiting
        await asyncio.Event().wait()

    async def failing() -> None:
        raise ValueError("broken before the stop")

    task, failed = asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(failing(), name="failing")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="flywheel.common.tasks"):
        await cancel_and_wait([task, failed, None], again_after=0.05)
    assert swallowed.is_set() and task.cancelled() and failed.done()
    messages = [r.getMessage() for r in caplog.records]
    assert "task stubborn survived its cancellation; cancelling it again" in messages
    assert any(m.startswith("task failing had failed when it was stopped: ValueError") for m in messages)


def test_no_wait_for_in_the_platform() -> None:
    found = [f"{path.relative_to(REPO)}:{n}" for folder in ("libs", "services")
             for path in sorted((REPO / folder).rglob("*.py")) if "__pycache__" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\basyncio\.wait_for\(", line) and not line.lstrip().startswith(("#", "-"))
             and path.name != "tasks.py"]
    assert not found, f"use flywheel.common.tasks.within instead of asyncio.wait_for: {found}"
