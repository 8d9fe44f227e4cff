"""Cumulative inference statistics of one loaded model version (Triton's statistics extension).

Counted on the hot path with plain integer adds on `__slots__` attributes: every update runs in the
event loop thread (the data plane and the batcher's flush loop), so no lock is needed, and nothing is
allocated beyond the ints themselves. Durations come from `time.perf_counter_ns`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Duration:
    """A count and the total nanoseconds it took."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class StatsSnapshot:
    """What the statistics endpoints report for one model version (transport-free)."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStats:
    """The counters of one loaded version; they start at zero when the version is loaded.

    Per request, `succeeded` or `failed` (data plane); per model execution, `executed` (the batcher,
    or the data plane when batching is off). A shadow version counts the requests it scores in shadow:
    they are executions of that version.
    """

    __slots__ = (
        "compute_infer_count",
        "compute_infer_ns",
        "compute_input_count",
        "compute_input_ns",
        "compute_output_count",
        "compute_output_ns",
        "execution_count",
        "fail_count",
        "fail_ns",
        "inference_count",
        "last_inference_perf_ns",
        "queue_count",
        "queue_ns",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def succeeded(self, rows: int, start: int, inputs_done: int, infer_done: int, end: int) -> None:
        """A request of `rows` rows answered; the four `perf_counter_ns` marks bound its phases."""
        self.inference_count += rows
        self.last_inference_perf_ns = end
        self.success_count += 1
        self.success_ns += end - start
        self.compute_input_count += 1
        self.compute_input_ns += inputs_done - start
        self.compute_output_count += 1
        self.compute_output_ns += end - infer_done

    def failed(self, start: int, end: int) -> None:
        self.fail_count += 1
        self.fail_ns += end - start

    def executed(self, requests: int, queue_ns: int, infer_ns: int) -> None:
        """One model execution scored `requests` requests that waited `queue_ns` in total (summed over
        them) and took `infer_ns`; each request is charged the whole execution, as Triton does."""
        self.execution_count += 1
        self.queue_count += requests
        self.queue_ns += queue_ns
        self.compute_infer_count += requests
        self.compute_infer_ns += infer_ns * requests

    def snapshot(self, name: str, version: str) -> StatsSnapshot:
        last = self.last_inference_perf_ns
        # The wall-clock time of the last inference, from its perf_counter mark: no clock read per request.
        last_ms = (time.time_ns() - time.perf_counter_ns() + last) // 1_000_000 if last else 0
        return StatsSnapshot(
            name=name, version=version, last_inference_ms=last_ms, inference_count=self.inference_count,
            execution_count=self.execution_count, success=Duration(self.success_count, self.success_ns),
            fail=Duration(self.fail_count, self.fail_ns), queue=Duration(self.queue_count, self.queue_ns),
            compute_input=Duration(self.compute_input_count, self.compute_input_ns),
            compute_infer=Duration(self.compute_infer_count, self.compute_infer_ns),
            compute_output=Duration(self.compute_output_count, self.compute_output_ns))
