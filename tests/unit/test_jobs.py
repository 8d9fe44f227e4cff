"""The job queue helper (flywheel.common.jobs): page tokens, channel names and the scheduler loop with
fake claims. Its SQL runs in the trainer's and the evaluator's integration tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.common.jobs import JobScheduler, JobTable, page_token, parse_page_token
from tests.polling import eventually


async def _true(value: bool) -> bool:
    return value


def test_page_tokens_round_trip_and_bad_ones_name_the_issuer() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    token = page_token({"created_at": created, "id": "run-1", "other": 3})
    assert parse_page_token(token, "trainer") == (created, "run-1")
    assert parse_page_token("", "trainer") is None
    with pytest.raises(InvalidArgument, match="page_token 'garbage' is not a token this trainer issued"):
        parse_page_token("garbage", "trainer")


def test_channel_names_fit_postgresql() -> None:
    table = JobTable("evaluations", queued="queued", running="running")
    assert table.channel("evaluator_ab12") == "flywheel_jobs_evaluator_ab12_evaluations"
    long = table.channel("x" * 80)
    assert len(long) < 64 and long == table.channel("x" * 80) != table.channel("y" * 80)


async def test_the_scheduler_runs_at_most_max_concurrent_jobs_and_survives_errors() -> None:
    queue = list(range(6))
    running: set[int] = set()
    peak = 0
    done: list[int] = []
    release = asyncio.Event()
    failures = 1

    async def claim() -> int | None:
        nonlocal failures
        if failures:  # one broken claim: the scheduler logs it, backs off and carries on
            failures -= 1
            raise RuntimeError("database away")
        return queue.pop(0) if queue else None

    async def execute(job: int) -> None:
        nonlocal peak
        running.add(job)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(job)

    scheduler = JobScheduler("test", claim=claim, execute=execute, key=str, max_concurrent=2, poll_interval=0.05,
                             on_done=done.append)
    scheduler.start()
    try:
        await eventually(lambda: _true(len(scheduler.executing) == 2), 5, "two jobs running", every=0.01)
        await asyncio.sleep(0.1)
        assert sorted(scheduler.executing) == ["0", "1"] and queue == [2, 3, 4, 5]
        release.set()
        await eventually(lambda: _true(len(done) == 6), 5, "every job done", every=0.01)
        assert sorted(done) == ["0", "1", "2", "3", "4", "5"] and peak == 2
    finally:
        await scheduler.stop()


async def test_stop_cancels_the_jobs_in_progress() -> None:
    cancelled: list[str] = []

    async def execute(job: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(job)
            raise

    jobs = ["a", "b"]

    async def claim() -> str | None:
        return jobs.pop(0) if jobs else None

    scheduler = JobScheduler("test", claim=claim, execute=execute, key=str, max_concurrent=3, poll_interval=0.05)
    scheduler.start()
    await eventually(lambda: _true(len(scheduler.executing) == 2), 5, "two jobs running", every=0.01)
    await scheduler.stop()
    assert sorted(cancelled) == ["a", "b"] and not scheduler.executing
