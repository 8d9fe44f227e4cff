"""Adaptive server-side batching: concurrent requests for one model version are scored together.

A request's rows join the pending batch; the batch is scored when it holds `max_rows` rows or
`max_wait_s` has passed since its first request, whichever comes first. While a batch is being
scored, new requests accumulate for the next one, so batches grow with load and a lone request
waits at most `max_wait_s`. With `max_wait_s` 0 nobody waits on a clock: the batch takes what arrived
by the next turn of the event loop (requests already received), so it costs a lone request nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from flywheel.inference.stats import ModelStats

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Batcher:
    def __init__(self, score: Score, *, max_rows: int, max_wait_s: float, stats: ModelStats | None = None,
                 inline_rows: int = 0) -> None:
        """`inline_rows`: batches of at most that many rows are scored on the event loop (a model cheaper
        than the hop to a worker thread); larger ones in a worker thread."""
        self.score = score
        self.inline_rows = inline_rows
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        # Executions, queue and compute times are counted here (the data plane counts the rest).
        self.stats = stats if stats is not None else ModelStats()
        # (numeric, categorical, future, perf_counter_ns when submitted)
        self._pending: list[tuple[np.ndarray, np.ndarray, asyncio.Future[np.ndarray], int]] = []
        self._rows = 0
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        if numeric.shape[0] >= self.max_rows:  # already a full batch on its own
            begin = time.perf_counter_ns()
            scores = await self._run(numeric, categorical)
            self.stats.executed(1, 0, time.perf_counter_ns() - begin)
            return scores
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((numeric, categorical, future, time.perf_counter_ns()))
        self._rows += numeric.shape[0]
        if self._rows >= self.max_rows:
            self._full.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())
        return await future

    async def _flush_loop(self) -> None:
        while self._pending:
            if self._rows < self.max_rows:
                if self.max_wait_s > 0:
                    loop = asyncio.get_running_loop()
                    timer = loop.call_later(self.max_wait_s, self._full.set)
                    await self._full.wait()
                    timer.cancel()
                else:
                    await asyncio.sleep(0)
            batch, taken = [], 0
            while self._pending and (not batch or taken + self._pending[0][0].shape[0] <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                taken += item[0].shape[0]
            self._rows -= taken
            if self._rows < self.max_rows:
                self._full.clear()
            try:
                numeric = np.concatenate([b[0] for b in batch]) if len(batch) > 1 else batch[0][0]
                categorical = np.concatenate([b[1] for b in batch]) if len(batch) > 1 else batch[0][1]
                begin = time.perf_counter_ns()
                scores = await self._run(numeric, categorical)
                self.stats.executed(len(batch), sum(begin - b[3] for b in batch), time.perf_counter_ns() - begin)
            except Exception as exc:  # every request of the batch gets the error
                for _, _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for n, _, future in ((b[0].shape[0], b[1], b[2]) for b in batch):
                if not future.done():
                    future.set_result(scores[start:start + n])
                start += n

    async def _run(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        if numeric.shape[0] <= self.inline_rows:
            return self.score(numeric, categorical)
        return await asyncio.to_thread(self.score, numeric, categorical)
