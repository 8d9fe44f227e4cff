"""The embedder's dynamic batcher: concurrent callers share batches, get their own results in order, and
only the caller whose items fail gets the error. Barriers, not timing: the encoder blocks on an event
while the test queues more callers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flywheel.embedder.batching import Batcher


class Encoder:
    """Records each batch; `hold` makes the next batch wait until released (from the test's loop)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on = "bad"

    def hold(self) -> None:
        self.started.clear()
        self.release.clear()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        assert self.release.wait(30)
        if self.fail_on in items:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return [item.upper() for item in items]


async def started(encoder: Encoder) -> None:
    assert await asyncio.to_thread(encoder.started.wait, 30)


async def test_concurrent_callers_share_a_batch_and_get_their_own_results_in_order() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=32, max_wait_s=0.0)
    encoder.hold()
    first = asyncio.create_task(batcher.submit(["a0"]))
    await started(encoder)  # the model is busy with the first caller...
    callers = [asyncio.create_task(batcher.submit([f"c{i}-{j}" for j in range(i % 3 + 1)])) for i in range(10)]
    await asyncio.sleep(0)
    assert batcher.pending == sum(i % 3 + 1 for i in range(10))  # ...so the others queue up
    encoder.release.set()
    assert await first == ["A0"]
    results = await asyncio.gather(*callers)
    for i, result in enumerate(results):
        assert result == [f"C{i}-{j}" for j in range(i % 3 + 1)]
    assert len(encoder.batches) == 2 and len(encoder.batches[1]) == sum(len(r) for r in results)
    assert batcher.batches == 2


async def test_batches_never_exceed_max_batch_and_a_large_request_spans_batches() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=4, max_wait_s=0.0)
    encoder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await started(encoder)
    big = asyncio.create_task(batcher.submit([f"t{i}" for i in range(10)]))
    small = asyncio.create_task(batcher.submit(["s"]))
    await asyncio.sleep(0)
    encoder.release.set()
    await blocker
    assert await big == [f"T{i}" for i in range(10)]
    assert await small == ["S"]
    assert all(len(b) <= 4 for b in encoder.batches)
    assert [b for b in encoder.batches[1:]] == [["t0", "t1", "t2", "t3"], ["t4", "t5", "t6", "t7"], ["t8", "t9", "s"]]


async def test_an_error_reaches_only_the_caller_whose_items_caused_it() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=32, max_wait_s=0.0)
    encoder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await started(encoder)
    good = [asyncio.create_task(batcher.submit([f"g{i}", f"h{i}"])) for i in range(3)]
    bad = asyncio.create_task(batcher.submit(["fine", "bad"]))
    await asyncio.sleep(0)
    encoder.release.set()
    await blocker
    for i, task in enumerate(good):
        assert await task == [f"G{i}", f"H{i}"]
    with pytest.raises(ValueError, match="cannot encode 'bad'"):
        await bad
    assert ["g0", "h0", "g1", "h1", "g2", "h2", "fine", "bad"] in encoder.batches  # they did share a batch
    # The batcher goes on.
    assert await batcher.submit(["after"]) == ["AFTER"]


async def test_a_lone_failing_caller_gets_the_error() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=8, max_wait_s=0.0)
    with pytest.raises(ValueError):
        await batcher.submit(["bad"])
    assert await batcher.submit(["ok"]) == ["OK"]


async def test_a_cancelled_caller_is_dropped_from_the_queue() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=32, max_wait_s=0.0)
    encoder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await started(encoder)
    gone = asyncio.create_task(batcher.submit(["gone"]))
    kept = asyncio.create_task(batcher.submit(["kept"]))
    await asyncio.sleep(0)
    gone.cancel()
    encoder.release.set()
    await blocker
    assert await kept == ["KEPT"]
    assert ["gone"] not in encoder.batches and not any("gone" in b for b in encoder.batches)


async def test_interactive_callers_go_before_background_items_and_never_share_their_batch() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=32, max_wait_s=0.0)
    encoder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await started(encoder)
    chunks = asyncio.create_task(batcher.submit([f"chunk{i}" for i in range(5)], background=True))
    query = asyncio.create_task(batcher.submit(["query"]))
    await asyncio.sleep(0)
    encoder.release.set()
    await asyncio.gather(blocker, chunks, query)
    assert encoder.batches[1:] == [["query"], [f"chunk{i}" for i in range(5)]]


async def test_a_lone_caller_waits_at_most_max_wait_and_the_queue_fills_a_batch() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=3, max_wait_s=30.0)
    # With a long max_wait, a batch goes as soon as it is full (never after the 30 s).
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit([f"q{i}"]) for i in range(3))), 20)
    assert results == [["Q0"], ["Q1"], ["Q2"]] and encoder.batches == [["q0", "q1", "q2"]]


async def test_a_lone_caller_does_not_wait_for_company_but_one_after_a_shared_batch_does() -> None:
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=2, max_wait_s=30.0)
    # Nothing suggests other callers: no max_wait (the guard is far below the 30 s it would take).
    assert await asyncio.wait_for(batcher.submit(["alone"]), 10) == ["ALONE"]
    assert await asyncio.wait_for(batcher.submit(["alone again"]), 10) == ["ALONE AGAIN"]
    # After a shared batch, a lone item waits for company (here until the batch of 2 is full).
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"])), 10) == [["A"], ["B"]]
    waiting = asyncio.create_task(batcher.submit(["c"]))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    joined = await asyncio.wait_for(asyncio.gather(waiting, batcher.submit(["d"])), 10)
    assert joined == [["C"], ["D"]] and encoder.batches[-1] == ["c", "d"]


async def test_after_a_batch_the_next_waits_for_the_callers_it_expects() -> None:
    """Expected = the last batch's size + what queued meanwhile: the answered caller's next text joins the
    two that queued while the model was busy (with a long max_wait, nothing goes before it arrives)."""
    encoder = Encoder()
    batcher: Batcher[str, str] = Batcher(encoder, max_batch=8, max_wait_s=30.0)
    encoder.hold()
    first = asyncio.create_task(batcher.submit(["a1"]))
    await started(encoder)
    queued = [asyncio.create_task(batcher.submit([t])) for t in ("b", "c")]
    await asyncio.sleep(0)
    encoder.started.clear()
    encoder.release.set()
    assert await first == ["A1"]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in queued) and len(encoder.batches) == 1  # waiting for the third caller
    again = await asyncio.wait_for(batcher.submit(["a2"]), 10)
    assert again == ["A2"] and [await t for t in queued] == [["B"], ["C"]]
    assert encoder.batches[1] == ["b", "c", "a2"]
