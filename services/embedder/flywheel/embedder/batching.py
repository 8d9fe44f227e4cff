"""Dynamic batching across concurrent callers of one model version.

Callers `submit` a list of items and get their results in order. Items from many callers are encoded
together in batches of at most `max_batch`. While a batch is being encoded, new items queue up and go in
the next one, so batches grow with load. When the model becomes free, the next batch waits up to
`max_wait` (from the model becoming free, or from its oldest item's arrival if later) until as many
items are queued as the last batch held plus those that queued meanwhile: the callers just answered send
their next texts right away, so concurrent callers share full batches instead of settling into
half-size cohorts that take turns. A lone caller (last batch 1, nothing queued) or the first text after
an idle second waits for nobody. One batch runs at a time per version, in a worker thread (torch
releases the GIL, so the event loop keeps serving meanwhile).

Two queues: interactive items (gRPC callers: queries) go before background items (document chunks),
and the two never share a batch, so a query does not wait behind, nor get padded to, 200-token chunks.
A caller's items may span consecutive batches of its version, never two versions (a batcher serves one).

When a batch fails, the items of each caller in it are retried on their own, so an error reaches only
the caller whose texts cause it. A cancelled caller's queued items are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram

from flywheel.common.tasks import cancel_and_wait, within

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = Histogram("flywheel_embedder_batch_size", "Texts encoded in one forward pass.",
                       ["model", "version", "queue"], buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256))
QUEUE_WAIT = Histogram("flywheel_embedder_queue_wait_seconds", "Time a text waited before its batch started.",
                       ["model", "version"],
                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ENCODE_SECONDS = Histogram("flywheel_embedder_encode_seconds", "Time to encode one batch.", ["model", "version"],
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TEXTS = Counter("flywheel_embedder_texts_total", "Texts encoded.", ["model", "version", "queue"])
BATCH_FAILURES = Counter("flywheel_embedder_batch_failures_total",
                         "Batches whose encoding failed (their callers were retried one by one).", ["model", "version"])

INTERACTIVE, BACKGROUND = "interactive", "background"
# Background items (document chunks) go first once they have waited this long, so a steady stream of
# queries cannot stall document ingestion.
BACKGROUND_STARVE_S = 0.5
# After this long without a batch, the batcher forgets how many callers it had (a lone text goes at once).
IDLE_RESET_S = 1.0


@dataclass(eq=False)
class _Request(Generic[R]):
    size: int
    future: asyncio.Future[list[R]]
    enqueued: float
    results: list[R | None] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * self.size
        self.remaining = self.size


class Batcher(Generic[T, R]):
    """`run(items) -> results` (same length, same order) is called in a worker thread with one batch."""

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch: int, max_wait_s: float,
                 labels: tuple[str, str] = ("", ""), executor: concurrent.futures.Executor | None = None) -> None:
        """`executor` runs the batches (None: asyncio's default thread pool). Give every batcher of a process
        the same one-thread executor: torch keeps one intra-op thread pool per calling thread, and one
        forward pass at a time is what a CPU does best anyway."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.labels = labels
        self.executor = executor
        self._queues: dict[str, collections.deque[tuple[_Request[R], int, T]]] = {
            INTERACTIVE: collections.deque(), BACKGROUND: collections.deque()}
        self._grew = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0  # batches encoded so far (tests and the bench read it)
        self._expected: dict[str, int] = {}  # queue -> texts its next batch waits for (see _drain)
        self._free_at = 0.0  # perf_counter when the last batch finished

    @property
    def pending(self) -> int:
        """Items queued (both queues), not yet in a batch."""
        return sum(len(q) for q in self._queues.values())

    def queued(self, *, background: bool = False) -> int:
        """Items queued in one of the queues."""
        return len(self._queues[BACKGROUND if background else INTERACTIVE])

    async def submit(self, items: Sequence[T], *, background: bool = False) -> list[R]:
        """The results of `items`, in order, encoded together with other callers' items."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request: _Request[R] = _Request(len(items), loop.create_future(), time.perf_counter())
        queue = self._queues[BACKGROUND if background else INTERACTIVE]
        queue.extend((request, i, item) for i, item in enumerate(items))
        self._grew.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name=f"batcher-{self.labels[0]}-{self.labels[1]}")
        try:
            return await asyncio.shield(request.future)
        except asyncio.CancelledError:
            request.future.cancel()  # its queued items are skipped
            raise

    def _next_queue(self) -> str | None:
        """Interactive first, unless background items have waited longer than `BACKGROUND_STARVE_S`."""
        interactive, background = self._queues[INTERACTIVE], self._queues[BACKGROUND]
        if background and (not interactive or
                           time.perf_counter() - background[0][0].enqueued > BACKGROUND_STARVE_S):
            return BACKGROUND
        return INTERACTIVE if interactive else None

    async def _drain(self) -> None:
        while True:
            self._drop_cancelled()
            name = self._next_queue()
            if name is None:
                return
            queue = self._queues[name]
            # A lone caller after lone callers (no sign of concurrent load) does not wait for company.
            # How many texts to wait for: as many as the last batch held plus those that queued meanwhile (the
            # callers just answered send their next texts right away); 1 after an idle spell or with no history.
            idle = time.perf_counter() - self._free_at > IDLE_RESET_S
            expected = 1 if idle else min(self.max_batch, self._expected.get(name, 1))
            # The wait starts when the oldest item arrived or, if later, when the model became free.
            deadline = max(queue[0][0].enqueued, self._free_at) + self.max_wait_s
            while len(queue) < expected and (left := deadline - time.perf_counter()) > 0:
                self._grew.clear()
                try:
                    await within(self._grew.wait(), left)
                except TimeoutError:
                    break
            self._drop_cancelled()
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            if batch:
                await self._encode(batch, name)

    def _drop_cancelled(self) -> None:
        for queue in self._queues.values():
            while queue and queue[0][0].future.done():
                queue.popleft()
            if any(r.future.done() for r, _, _ in queue):
                kept = [entry for entry in queue if not entry[0].future.done()]
                queue.clear()
                queue.extend(kept)

    async def _encode(self, batch: list[tuple[_Request[R], int, T]], queue: str) -> None:
        started = time.perf_counter()
        for request, _, _ in batch:
            QUEUE_WAIT.labels(*self.labels).observe(started - request.enqueued)
        BATCH_SIZE.labels(*self.labels, queue).observe(len(batch))
        self.batches += 1
        try:
            try:
                results = await self._call([item for _, _, item in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the encoder returned {len(results)} results for {len(batch)} inputs")
            finally:
                self._free_at = time.perf_counter()
                self._expected[queue] = len(batch) + len(self._queues[queue])
                ENCODE_SECONDS.labels(*self.labels).observe(self._free_at - started)
        except asyncio.CancelledError:  # close(): nobody will deliver these results
            for request, _, _ in batch:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("the embedder is shutting down"))
            raise
        except Exception as exc:
            BATCH_FAILURES.labels(*self.labels).inc()
            await self._isolate(batch, exc)
            return
        TEXTS.labels(*self.labels, queue).inc(len(batch))
        for (request, index, _), result in zip(batch, results, strict=True):
            self._deliver(request, index, result)

    async def _isolate(self, batch: list[tuple[_Request[R], int, T]], error: Exception) -> None:
        """A failed batch: each caller's items again on their own, so only the culprit gets an error."""
        callers: dict[_Request[R], list[tuple[int, T]]] = {}
        for request, index, item in batch:
            callers.setdefault(request, []).append((index, item))
        if len(callers) == 1:
            request = next(iter(callers))
            if not request.future.done():
                request.future.set_exception(error)
            return
        for request, entries in callers.items():
            if request.future.done():
                continue
            try:
                results = await self._call([item for _, item in entries])
            except Exception as exc:
                if not request.future.done():
                    request.future.set_exception(exc)
                continue
            for (index, _), result in zip(entries, results, strict=True):
                self._deliver(request, index, result)

    async def _call(self, items: list[T]) -> list[R]:
        if self.executor is None:
            return await asyncio.to_thread(self.run, items)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, items)

    @staticmethod
    def _deliver(request: _Request[R], index: int, result: R) -> None:
        if request.future.done():
            return
        request.results[index] = result
        request.remaining -= 1
        if request.remaining == 0:
            request.future.set_result(request.results)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Stop batching: queued callers get an error; a batch being encoded is abandoned (its worker thread
        finishes in the background; its callers were cancelled or get the error)."""
        for queue in self._queues.values():
            for request, _, _ in queue:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("the embedder is shutting down"))
            queue.clear()
        await cancel_and_wait([self._task])
