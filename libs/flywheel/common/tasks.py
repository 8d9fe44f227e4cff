"""Timeouts and cancellation that a stop can rely on.

Python 3.11's `asyncio.wait_for(aw, t)` swallows a cancellation that arrives in the same loop iteration as `aw`
completing: it returns `aw`'s result and the task goes on as if never cancelled (fixed in 3.12, gh-86296). A
worker loop that waits with `wait_for(wake.wait(), poll)` then outlives the `task.cancel()` of its `stop()`, and
the `await task` after it waits forever: a CI run's teardown hung 300 s that way when a job's end woke the
scheduler just as the evaluator stopped. So:

- `within(aw, seconds)` replaces `asyncio.wait_for` everywhere (`asyncio.timeout` runs `aw` in the caller's task:
  there is no second future to complete under the cancellation). `tests/unit/test_tasks.py` keeps `wait_for`
  out of the source.
- `cancel_and_wait(tasks)` is how a stop ends its tasks: it cancels again, with a warning naming the task, a
  task still running a second after its cancellation (a library can swallow one too), and logs, not raises, what
  the tasks died of.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`await awaitable`, raising TimeoutError after `seconds` (None: no limit); a cancellation always propagates."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def cancel_and_wait(tasks: Iterable[asyncio.Task | asyncio.Future | None], *, again_after: float = 1.0) -> None:
    """Cancel every task and return once all have ended, cancelling again any that survives its cancellation."""
    pending = {task for task in tasks if task is not None}
    for task in pending:
        task.cancel()
    ended: set[asyncio.Future] = set()
    while pending:
        done, pending = await asyncio.wait(pending, timeout=again_after)
        ended |= done
        for task in pending:
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("task %s survived its cancellation; cancelling it again", name, extra={"task": name})
            task.cancel()
    for task in ended:
        if not task.cancelled() and task.exception() is not None:
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("task %s had failed when it was stopped: %r", name, task.exception(),
                        exc_info=task.exception(), extra={"task": name})
