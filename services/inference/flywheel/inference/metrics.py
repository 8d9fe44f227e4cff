"""The data plane's Prometheus metrics, counted in plain ints and exported by a collector.

`prometheus_client` counters cost a label lookup (a dict of tuples behind a lock) and a locked add per
call; three of them plus a histogram per request were a visible share of a tiny model's request. Here
the hot path adds to the attributes of one `ArmMetrics` per (model, arm), found with one dict lookup,
and the collector turns them into the same metric families when /metrics is scraped. Every update
runs in the event loop's thread, so no lock is needed.

    flywheel_inference_requests_total{model, arm, outcome}   requests ("ok" or the error's type)
    flywheel_inference_rows_total{model, arm}                rows scored
    flywheel_inference_latency_seconds{model, arm}           scoring time per request (histogram)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5)


class ArmMetrics:
    """The counts of one (model, arm)."""

    __slots__ = ("buckets", "ok", "rows", "seconds")

    def __init__(self) -> None:
        self.ok = 0
        self.rows = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: above every bound (+Inf)

    def observe(self, rows: int, seconds: float) -> None:
        """One request answered: `rows` rows scored in `seconds`."""
        self.ok += 1
        self.rows += rows
        self.seconds += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1


class InferenceMetrics(Collector):
    def __init__(self) -> None:
        self.arms: dict[tuple[str, str], ArmMetrics] = {}
        self.failures: dict[tuple[str, str, str], int] = {}

    def arm(self, model: str, arm: str) -> ArmMetrics:
        found = self.arms.get((model, arm))
        if found is None:
            found = self.arms[model, arm] = ArmMetrics()
        return found

    def failed(self, model: str, arm: str, outcome: str) -> None:
        key = (model, arm, outcome)
        self.failures[key] = self.failures.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("flywheel_inference_requests", "Inference requests.",
                                       labels=["model", "arm", "outcome"])
        rows = CounterMetricFamily("flywheel_inference_rows", "Rows scored.", labels=["model", "arm"])
        latency = HistogramMetricFamily("flywheel_inference_latency_seconds",
                                        "Scoring time per request (incl. batching wait).", labels=["model", "arm"])
        for (model, arm), m in list(self.arms.items()):
            requests.add_metric([model, arm, "ok"], m.ok)
            rows.add_metric([model, arm], m.rows)
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), m.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([model, arm], buckets, m.seconds)
        for (model, arm, outcome), count in list(self.failures.items()):
            requests.add_metric([model, arm, outcome], count)
        yield requests
        yield rows
        yield latency


# One per process (the metric names are the process's), registered once.
METRICS = InferenceMetrics()
REGISTRY.register(METRICS)
