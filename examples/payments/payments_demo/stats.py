"""How well the served versions do: every scored payment against the truth the driver knows, as windowed
metrics, per phase of the scenario, per answering version, and a time series for the status page's plot."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Prediction:
    """One served prediction and the truth about it (the driver knows the world it simulates)."""

    at: float  # wall clock, Unix seconds
    transaction_id: str
    request_id: str
    version: int
    probability: float
    predicted: bool
    truth: bool
    phase: str


@dataclass
class Confusion:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, predicted: bool, truth: bool) -> None:
        if predicted and truth:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif truth:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def metrics(self) -> dict[str, float | int | None]:
        """accuracy, f1, recall (fraud caught), precision; None where undefined (nothing to divide by)."""
        n = self.n
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else None
        return {"n": n, "accuracy": (self.tp + self.tn) / n if n else None, "f1": f1, "recall": recall,
                "precision": precision, "frauds": self.tp + self.fn}


def confusion(predictions: Iterable[Prediction]) -> Confusion:
    c = Confusion()
    for p in predictions:
        c.add(p.predicted, p.truth)
    return c


class LiveStats:
    """Served predictions vs truth: windowed metrics, per phase and per version, and the time series to plot."""

    def __init__(self, window: int = 200, max_points: int = 3000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window_size = window
        self.recent: deque[Prediction] = deque(maxlen=window)
        self.by_phase: dict[str, Confusion] = {}
        self.by_version: dict[int, Confusion] = {}
        # (phase, version): how each version did on each world, e.g. the old champion on drifted traffic.
        self.by_phase_version: dict[tuple[str, int], Confusion] = {}
        self.series: deque[dict[str, Any]] = deque(maxlen=max_points)
        self.total = 0
        self.unscored = 0
        self.labels_sent = 0
        self.last_version = 0

    def record(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            self.recent.append(p)
            self.by_phase.setdefault(p.phase, Confusion()).add(p.predicted, p.truth)
            self.by_version.setdefault(p.version, Confusion()).add(p.predicted, p.truth)
            self.by_phase_version.setdefault((p.phase, p.version), Confusion()).add(p.predicted, p.truth)
            self.total += 1
            self.last_version = p.version
        if predictions:
            last = predictions[-1]
            self.series.append({"t": last.at, "version": last.version, "phase": last.phase, "n": self.total,
                                **{k: v for k, v in self.window().items() if k in ("accuracy", "f1", "recall")}})

    def window(self) -> dict[str, float | int | None]:
        return confusion(self.recent).metrics()

    def snapshot(self) -> dict[str, Any]:
        return {
            "scored": self.total, "unscored": self.unscored, "labels_sent": self.labels_sent,
            "serving_version": self.last_version, "window_size": self.window_size, "window": self.window(),
            "by_phase": {k: v.metrics() for k, v in self.by_phase.items()},
            "by_version": {str(k): v.metrics() for k, v in sorted(self.by_version.items())},
            "by_phase_version": {f"{phase}/v{version}": c.metrics()
                                 for (phase, version), c in sorted(self.by_phase_version.items())},
            "series": list(self.series),
        }
