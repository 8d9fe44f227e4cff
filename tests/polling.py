"""Waiting in tests for something asynchronous to happen (a consumer caught up, a run finished)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "condition", *,
                     every: float = 0.1, state: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """Await `check()` every `every` seconds until it returns something truthy, and return that. After
    `timeout` seconds fail, saying what was awaited, the last value and (when given) `await state()`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            seen = f"\n{await state()}" if state is not None else ""
            raise AssertionError(f"{what} not reached within {timeout:.0f}s (last value {value!r}){seen}")
        await asyncio.sleep(every)
