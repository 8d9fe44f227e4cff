"""The live demo driver: card payments flowing through the running platform, in compressed time.

What a bank's systems would do around Flywheel, played by one process so the closed loop can be
watched: the payment switch scores each payment over inference's OIP v2 gRPC API (by entity ids,
after the bank's streaming pipeline pushed the payment's features), and chargebacks/settlements
come back as ground-truth `feedback.received` events a few (wall) seconds later. A scripted
scenario switches the world from `stable` to a drifted one, so the monitor should alert, the
trainer retrain, the evaluator judge and the registry promote a new version, while the driver
measures how well the served versions do.

Time: the generator works in simulated days. Features are computed in simulated time (so the
24 h / 30 d aggregates are the ones the world produces), then every timestamp is re-stamped with
one linear map `wall = wall_anchor + (sim - sim_anchor) / compression` (`TimeMap`). History
before the anchor is published at once (bootstrap); live payments are scored when the wall clock
reaches their mapped time. The clock stands still while bootstrapping: the map is re-anchored at
the start of the live loop (`TimeMap.resumed`), so training time does not turn into a backlog.

Library use (the platform's loop test does this):

    config = DriverConfig(model="fraud", history_days=3, epochs=5)
    driver = DemoDriver(config, Addresses.from_env())
    await driver.start()                  # channels, producer, event consumer
    version = await driver.bootstrap()    # history, first training run, a champion
    await driver.run(max_transactions=200)
    driver.stats.window()                 # accuracy / f1 / recall of the last K scored payments
    await driver.stop()

Command line: `python -m payments_demo drive --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import math
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared
from payments_demo.generator import Scenario, Transaction, generate
from payments_demo.pipeline import (
    CUSTOMER_STATS_LEAD,
    FeatureRow,
    feature_rows,
    feedback_events,
)

log = logging.getLogger("payments_demo.live")

SCORED = Counter("payments_demo_payments_scored_total", "Payments scored over inference, by answering version.",
                 ["version"])
UNSCORED = Counter("payments_demo_payments_unscored_total", "Payments inference did not answer.")
LABELS_SENT = Counter("payments_demo_labels_sent_total", "Ground-truth labels sent to feedback.received.")
WINDOW_ACCURACY = Gauge("payments_demo_window_accuracy", "Accuracy of the last K scored payments.")

SIM_START = datetime(2026, 1, 1, tzinfo=UTC)
DAY_SECONDS = 86_400.0
# Phases of the scripted scenario, in order.
BOOTSTRAP, STABLE, DRIFT = "bootstrap", "stable", "drift"
DRIFTS = ("concept_shift", "covariate_shift", "both", "none")
# Failures of a first run that mean "the trainer has not consumed the history's labels yet".
RETRYABLE_RUN_FAILURES = ("labelled rows", "has only one class")
# Platform events the driver narrates on its console and shows on its status page.
WATCHED_TOPICS = ("drift.detected", "retrain.requests", "models.registered", "evaluations.completed",
                  "models.promoted")


# --- time ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeMap:
    """One linear map from simulated time to wall-clock time: `wall = wall_anchor + (sim - sim_anchor) / compression`.

    `compression` is simulated seconds per wall second (1440 = one simulated day per wall minute).
    """

    wall_anchor: datetime
    sim_anchor: datetime
    compression: float

    def __post_init__(self) -> None:
        if not self.compression > 0:
            raise ValueError(f"compression must be positive, got {self.compression}")

    @classmethod
    def day_per(cls, wall_seconds_per_day: float, *, wall_anchor: datetime, sim_anchor: datetime) -> TimeMap:
        """The map where one simulated day lasts `wall_seconds_per_day` wall seconds."""
        return cls(wall_anchor, sim_anchor, DAY_SECONDS / wall_seconds_per_day)

    def to_wall(self, sim: datetime) -> datetime:
        return self.wall_anchor + (sim - self.sim_anchor) / self.compression

    def to_sim(self, wall: datetime) -> datetime:
        return self.sim_anchor + (wall - self.wall_anchor) * self.compression

    def wall_duration(self, sim: timedelta) -> timedelta:
        return sim / self.compression

    def resumed(self, at: datetime) -> TimeMap:
        """The same map, with simulated time standing still from `sim_anchor` until the wall time `at`."""
        return replace(self, wall_anchor=at)


def restamp_row(row: FeatureRow, time_map: TimeMap) -> FeatureRow:
    """`row` with its event time mapped to the wall clock.

    A `customer_stats` row is stamped `CUSTOMER_STATS_LEAD` before its payment; mapping compresses that
    lead below a microsecond, so the lead is re-applied after mapping the payment's own time: the row
    stays strictly before its payment (and after the customer's previous payment's row).
    """
    if row.view == "customer_stats":
        when = time_map.to_wall(row.event_time + CUSTOMER_STATS_LEAD) - CUSTOMER_STATS_LEAD
    else:
        when = time_map.to_wall(row.event_time)
    return replace(row, event_time=when)


def demo_scenario(drift: str = "both", *, chargeback_hours: tuple[float, float] = (2.0, 6.0),
                  settlement_hours: tuple[float, float] = (1.0, 3.0), cloned_card_rate: float = 0.06) -> Scenario:
    """The live demo's world: the generator's shift scenarios with label delays of simulated hours.

    Banks wait days for chargebacks; the demo cannot, so labels come a few simulated hours after the
    payment (a few wall seconds at the default compression). `drift`: concept_shift (cloned cards at
    grocery/fuel, at `cloned_card_rate` of the daily volume), covariate_shift, both, or none.
    """
    if drift not in DRIFTS:
        raise ValueError(f"unknown drift {drift!r}; known: {', '.join(DRIFTS)}")
    for name, (lo, hi) in (("chargeback_hours", chargeback_hours), ("settlement_hours", settlement_hours)):
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must be 0 <= low <= high, got {lo}, {hi}")
    return Scenario(
        name=f"live_{drift}", description=f"Live demo: stable, then {drift}, labels after hours.",
        covariate_shift=drift in ("covariate_shift", "both"), concept_shift=drift in ("concept_shift", "both"),
        cloned_card_rate=cloned_card_rate,
        chargeback_days=(chargeback_hours[0] / 24, chargeback_hours[1] / 24),
        settlement_days=(settlement_hours[0] / 24, settlement_hours[1] / 24))


# --- configuration -------------------------------------------------------------------------------------------------


class Addresses(ServiceSettings):
    """Where the platform's services are: the same FLYWHEEL_<SERVICE>_ADDR variables `make run` sets."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_DEMO_", extra="ignore", populate_by_name=True)

    registry_addr: str = shared("registry_addr", "127.0.0.1:50051", "Registry gRPC address.")  # type: ignore[assignment]
    featurestore_addr: str = shared("featurestore_addr", "127.0.0.1:50052", "Feature store gRPC address.")  # type: ignore[assignment]
    trainer_addr: str = shared("trainer_addr", "127.0.0.1:50053", "Trainer gRPC address.")  # type: ignore[assignment]
    inference_addr: str = shared("inference_addr", "127.0.0.1:8001", "Inference OIP v2 gRPC address.")  # type: ignore[assignment]
    evaluator_addr: str = shared("evaluator_addr", "127.0.0.1:50057", "Evaluator gRPC address.")  # type: ignore[assignment]
    monitor_addr: str = shared("monitor_addr", "127.0.0.1:50058", "Monitor gRPC address.")  # type: ignore[assignment]
    status_port: int = Field(8090, description="Port of the status page (0 = off).")

    @classmethod
    def from_env(cls, **overrides: Any) -> Addresses:
        return cls(**overrides)


@dataclass
class DriverConfig:
    """What the driver plays. Defaults make the loop visible within a few minutes of `make run`."""

    model: str = "fraud"
    seed: int = 7
    # Wall seconds one simulated day lasts (the compression).
    day_seconds: float = 5.0
    # Payments per wall second (so transactions_per_day = rate * day_seconds). 50/s x 5 s = 250 a day:
    # the monitor's default window (500 rows) then spans two simulated days, enough to see whole daily
    # cycles (hour of day, 24-hour counts) and to average out single days of fraud bursts.
    rate: float = 50.0
    # Simulated days generated only so the 30-day aggregates start in their steady state (never published).
    warmup_days: int = 30
    # Simulated days published at bootstrap and trained on.
    history_days: int = 10
    # Live simulated days before the drift starts, then drifted days; the driver idles after the last.
    stable_days: int = 12
    drift_days: int = 120
    # Measured (gradient boosting with a max-F1 threshold, 6 days of training each side): on `both` with
    # cloned_card_rate 0.06 the stable-trained model falls from accuracy 0.967 / F1 0.29 to 0.894 / 0.04,
    # a model retrained on drifted days gets 0.945 / 0.46; concept_shift alone hurts less (0.950 / 0.04).
    drift: str = "both"
    cloned_card_rate: float = 0.06
    chargeback_hours: tuple[float, float] = (2.0, 6.0)
    settlement_hours: tuple[float, float] = (1.0, 3.0)
    customers: int = 500
    merchants: int = 60
    # Largest number of payments per ModelInfer request.
    batch_size: int = 20
    # How often the live loop wakes up, in wall seconds.
    tick_seconds: float = 0.5
    # Scored payments in the accuracy window.
    window: int = 200
    # Training run overrides (StartRun params), e.g. epochs.
    epochs: int | None = None
    run_params: dict[str, str] = field(default_factory=dict)
    # Seconds to wait for a champion after the first run (an evaluator may promote it) before setting it.
    champion_wait: float = 5.0
    # Seconds to wait until the trainer has consumed the history's labels.
    label_wait: float = 120.0
    # Seconds to wait until inference serves the champion.
    ready_wait: float = 120.0
    # Status line every this many wall seconds (0 = never).
    status_every: float = 10.0
    # Train even when the model already has a champion.
    retrain_on_start: bool = False

    @property
    def transactions_per_day(self) -> int:
        return max(1, round(self.rate * self.day_seconds))

    def scenario(self) -> Scenario:
        return demo_scenario(self.drift, chargeback_hours=self.chargeback_hours,
                             settlement_hours=self.settlement_hours, cloned_card_rate=self.cloned_card_rate)


# --- the simulated timeline ----------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Every payment of the session and the pipeline's feature rows, in simulated time."""

    transactions: list[Transaction]
    rows: list[FeatureRow]
    # Published history starts here; live traffic starts at `live_start`; the drift at `onset`.
    history_start: datetime
    live_start: datetime
    onset: datetime | None
    end: datetime

    def phase(self, sim: datetime) -> str:
        if sim < self.live_start:
            return BOOTSTRAP
        return DRIFT if self.onset is not None and sim >= self.onset else STABLE


def build_timeline(config: DriverConfig, session: str) -> Timeline:
    """Generate warm-up + history + live days; payment ids carry the session tag, so a restarted driver
    publishes new payments instead of colliding with the ones (and the label event ids) of a previous run."""
    live_start_day = config.warmup_days + config.history_days
    onset_day = live_start_day + config.stable_days
    days = onset_day + config.drift_days
    drifting = config.drift != "none" and config.drift_days > 0
    txns = generate(config.scenario(), seed=config.seed, start=SIM_START, days=days,
                    transactions_per_day=config.transactions_per_day, customers=config.customers,
                    merchants=config.merchants, onset_day=onset_day if drifting else days)
    for t in txns:
        t.transaction_id = f"t{session}-{t.transaction_id.removeprefix('t-')}"
    return Timeline(
        transactions=txns, rows=list(feature_rows(txns)),
        history_start=SIM_START + timedelta(days=config.warmup_days),
        live_start=SIM_START + timedelta(days=live_start_day),
        onset=SIM_START + timedelta(days=onset_day) if drifting else None,
        end=SIM_START + timedelta(days=days))


# --- labels --------------------------------------------------------------------------------------------------------


@dataclass(order=True)
class PendingLabel:
    """A label the bank will learn at `observed_sim`, for a payment stamped `event_wall`."""

    observed_sim: datetime
    seq: int
    txn: Transaction = field(compare=False)
    event_wall: datetime = field(compare=False)
    request_id: str = field(compare=False)


class LabelSchedule:
    """Labels waiting for their (simulated) observation time; `due` hands them out in that order.

    Kept in simulated time, so a re-anchored time map (the clock paused for the bootstrap) still
    delivers each label the same simulated delay after its payment.
    """

    def __init__(self) -> None:
        self._heap: list[PendingLabel] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, txn: Transaction, *, event_wall: datetime, request_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, PendingLabel(txn.label_observed_at, self._seq, txn, event_wall, request_id))

    def due(self, sim_now: datetime) -> list[PendingLabel]:
        out = []
        while self._heap and self._heap[0].observed_sim <= sim_now:
            out.append(heapq.heappop(self._heap))
        return out


def label_event(pending: PendingLabel, time_map: TimeMap) -> Any:
    """The `feedback.received` event of a due label: the prediction's request id, the payment as entity,
    its event time as stamped on its features, and the (mapped) time the bank learned the truth."""
    from flywheel.proto.events.v1.common_pb2 import Label
    from flywheel.proto.events.v1.predictions_pb2 import FEEDBACK_SOURCE_GROUND_TRUTH, FeedbackReceived

    t = pending.txn
    fb = FeedbackReceived(
        feedback_id=f"fb-{t.transaction_id}", request_id=pending.request_id, entity_id=t.transaction_id,
        source=FEEDBACK_SOURCE_GROUND_TRUTH, label=Label(flag=t.is_fraud),
        comment="chargeback" if t.is_fraud else "settled",
        entity_keys={"transaction_id": t.transaction_id, "customer_id": t.customer_id, "merchant_id": t.merchant_id})
    fb.event_time.FromDatetime(pending.event_wall)
    fb.observed_at.FromDatetime(max(time_map.to_wall(pending.observed_sim), pending.event_wall))
    (event,) = feedback_events([fb])
    return event


# --- stats ---------------------------------------------------------------------------------------------------------


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


# --- the platform, seen from the bank ------------------------------------------------------------------------------


class Platform:
    """gRPC stubs of the services the driver talks to (one aio channel each, every call with a deadline)."""

    def __init__(self, addresses: Addresses, timeout: float = 10.0) -> None:
        from flywheel.common import rpc
        from flywheel.common.clients.registry import RegistryClient
        from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc
        from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc
        from flywheel.proto.inference import grpc_service_pb2_grpc
        from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc
        from flywheel.proto.registry.v1 import registry_service_pb2_grpc
        from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc

        self.addresses = addresses
        auth = addresses.client_auth()
        self._channels = {name: rpc.channel(getattr(addresses, f"{name}_addr"), default_timeout=timeout, auth=auth)
                          for name in ("registry", "featurestore", "trainer", "inference", "evaluator", "monitor")}
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self._channels["registry"])
        self.versions = RegistryClient(addresses.registry_addr, auth=auth, timeout=timeout, keep_channel=True)
        self.featurestore = feature_store_service_pb2_grpc.FeatureStoreServiceStub(self._channels["featurestore"])
        self.trainer = trainer_service_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channels["inference"])
        self.evaluator = evaluator_service_pb2_grpc.EvaluatorServiceStub(self._channels["evaluator"])
        self.monitor = monitor_service_pb2_grpc.MonitorServiceStub(self._channels["monitor"])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        await self.versions.close()

    async def champion(self, model: str) -> int:
        """The registry's champion version of `model` (0 = none, or the model is unknown)."""
        return await self.versions.version_of(model, "champion")

    async def push(self, rows: Sequence[FeatureRow], chunk: int = 1000) -> int:
        """PushFeatures (online + offline, synchronously), per push source, in event-time order."""
        from flywheel.common.clients.featurestore import feature_value
        from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs

        by_source: dict[str, list[FeatureRow]] = {}
        for row in rows:
            by_source.setdefault(row.push_source, []).append(row)
        written = 0
        for source, group in by_source.items():
            for i in range(0, len(group), chunk):
                request = fs.PushFeaturesRequest(push_source=source)
                for row in group[i:i + chunk]:
                    push_row = request.rows.add(
                        entity_keys={k: feature_value(v) for k, v in row.entity_keys.items()},
                        values={k: feature_value(v) for k, v in row.values.items()})
                    push_row.event_time.FromDatetime(row.event_time)
                written += (await self.featurestore.PushFeatures(request, timeout=60)).rows_written
        return written

    async def infer(self, model: str, request_id: str, txns: Sequence[Transaction]) -> tuple[int, np.ndarray,
                                                                                             np.ndarray]:
        """Score payments by entity ids; (version that answered, probabilities, predicted labels)."""
        from flywheel.proto.inference import grpc_service_pb2 as ipb

        request = ipb.ModelInferRequest(model_name=model, id=request_id)
        for key in ("transaction_id", "customer_id", "merchant_id"):
            tensor = request.inputs.add(name=key, datatype="BYTES", shape=[len(txns)])
            tensor.contents.bytes_contents.extend(getattr(t, key).encode() for t in txns)
        response = await self.inference.ModelInfer(request)
        outputs = {}
        for i, out in enumerate(response.outputs):
            dtype = "<f4" if out.datatype == "FP32" else "<i8"
            if i < len(response.raw_output_contents):
                outputs[out.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
            elif out.datatype == "FP32":
                outputs[out.name] = np.array(out.contents.fp32_contents, dtype=np.float32)
            else:
                outputs[out.name] = np.array(out.contents.int64_contents, dtype=np.int64)
        return int(response.model_version or 0), outputs["probability"], outputs["label"].astype(bool)

    async def model_ready(self, model: str) -> bool:
        import grpc

        from flywheel.proto.inference import grpc_service_pb2 as ipb

        try:
            return (await self.inference.ModelReady(ipb.ModelReadyRequest(name=model), timeout=3)).ready
        except grpc.aio.AioRpcError:
            return False


# --- platform events -----------------------------------------------------------------------------------------------


def describe_event(topic_name: str, payload: Any) -> str:
    """One console line for a platform event, in words a person watching the demo follows."""
    from flywheel.proto.events.v1 import models_pb2, monitoring_pb2

    if topic_name == "drift.detected":
        drifted = [f.feature for f in payload.features if f.drifted]
        perf = ", ".join(f"{k}={v:.3f}" for k, v in sorted(payload.performance.items()))
        return (f"ALERT drift on {payload.model.name}:v{payload.model.version} "
                f"({monitoring_pb2.DriftSeverity.Name(payload.severity).removeprefix('DRIFT_SEVERITY_').lower()}):"
                f" {payload.drifted_share:.0%} of features drifted ({', '.join(drifted[:5]) or 'none'})"
                + (f"; {perf}" if perf else ""))
    if topic_name == "retrain.requests":
        reason = models_pb2.RetrainReason.Name(payload.reason).removeprefix("RETRAIN_REASON_").lower()
        return f"RETRAIN requested for {payload.model_name} ({reason}), parent v{payload.parent.version}"
    if topic_name == "models.registered":
        metrics = ", ".join(f"{k}={payload.metrics[k]:.3f}" for k in ("roc_auc", "f1") if k in payload.metrics)
        return f"REGISTERED {payload.model.name}:v{payload.model.version}" + (f" ({metrics})" if metrics else "")
    if topic_name == "evaluations.completed":
        verdict = models_pb2.EvaluationVerdict.Name(payload.verdict).removeprefix("EVALUATION_VERDICT_")
        failed = [c.name for c in payload.checks if not c.passed]
        return (f"EVALUATED {payload.model_name}:v{payload.candidate_version} vs v{payload.baseline_version}: "
                f"{verdict}" + (f" (failed: {', '.join(failed)})" if failed else ""))
    if topic_name == "models.promoted":
        reason = models_pb2.PromotionReason.Name(payload.reason).removeprefix("PROMOTION_REASON_").lower()
        return (f"PROMOTED {payload.model_name}@{payload.alias}: v{payload.previous_version} -> v{payload.version} "
                f"({reason}, by {payload.actor or 'unknown'})")
    return f"{topic_name}: {payload}"


def event_record(topic_name: str, payload: Any, at: float) -> dict[str, Any]:
    """The JSON the status page shows for an event (plus the console line)."""
    from google.protobuf.json_format import MessageToDict

    return {"topic": topic_name, "at": at, "text": describe_event(topic_name, payload),
            "event": MessageToDict(payload, preserving_proto_field_name=True)}


# --- the driver ----------------------------------------------------------------------------------------------------


class DemoDriver:
    """Plays the bank around the platform: bootstrap, then live traffic, labels, and the narration."""

    def __init__(self, config: DriverConfig, addresses: Addresses, *, session: str | None = None,
                 consume_events: bool = True) -> None:
        self.config = config
        self.addresses = addresses
        self.session = session or np.base_repr(int(time.time()), 36).lower()
        self.timeline = build_timeline(config, self.session)
        now = datetime.now(UTC)
        self.time = TimeMap.day_per(config.day_seconds, wall_anchor=now, sim_anchor=self.timeline.live_start)
        self.labels = LabelSchedule()
        self.stats = LiveStats(config.window)
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self.markers: list[dict[str, Any]] = []  # drift onset and promotions, for the plot
        self.phase = BOOTSTRAP
        self.platform: Platform | None = None
        self.champion = 0
        self._consume = consume_events
        self._producer: Any = None
        self._consumer_task: asyncio.Task | None = None
        self._next_txn = 0
        self._next_row = 0
        self._last_status = time.monotonic()
        self._stopping = asyncio.Event()
        self._live = False

    # -- life --

    async def start(self) -> None:
        """Connect: gRPC channels, a Kafka producer for labels, the event consumer (latest offsets)."""
        from flywheel.common.kafka import ensure_topics, new_producer
        from flywheel.common.topics import FEEDBACK_RECEIVED, topic

        bootstrap = self.addresses.kafka_bootstrap
        if not bootstrap:
            raise RuntimeError("no Kafka: set FLYWHEEL_KAFKA_BOOTSTRAP or start the embedded stack (make run)")
        self.platform = Platform(self.addresses)
        await ensure_topics(bootstrap, [FEEDBACK_RECEIVED, *(topic(n) for n in WATCHED_TOPICS)])
        self._producer = new_producer(bootstrap, client_id=f"payments-demo-{self.session}")
        await self._producer.start()
        if self._consume:
            ready = asyncio.Event()
            self._consumer_task = asyncio.create_task(self._consume_events(ready), name="demo-events")
            await asyncio.wait_for(ready.wait(), timeout=30)
            if self._consumer_task.done():  # it failed before listening: say so instead of narrating nothing
                self._consumer_task.result()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer_task is not None:
            self._consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer_task
        if self._producer is not None:
            await self._producer.stop()
        if self.platform is not None:
            await self.platform.close()

    def request_stop(self) -> None:
        self._stopping.set()

    # -- bootstrap --

    async def bootstrap(self) -> int:
        """History into the feature store and the trainer's labels, a first run, and a champion; returns it.

        Skips the training (not the history) when the model already has a champion, unless
        `retrain_on_start`: a restarted demo keeps serving what the loop promoted.
        """
        assert self.platform is not None, "call start() first"
        cfg, tl = self.config, self.timeline
        now = datetime.now(UTC)
        self.time = replace(self.time, wall_anchor=now)
        history = [t for t in tl.transactions if tl.history_start <= t.event_time < tl.live_start]
        rows = [restamp_row(r, self.time) for r in tl.rows
                if tl.history_start - CUSTOMER_STATS_LEAD <= r.event_time < tl.live_start]
        written = await self.platform.push(rows)
        self._next_row = next((i for i, r in enumerate(tl.rows) if r.event_time >= tl.live_start), len(tl.rows))
        self._next_txn = next((i for i, t in enumerate(tl.transactions) if t.event_time >= tl.live_start),
                              len(tl.transactions))
        for t in history:
            self.labels.add(t, event_wall=self.time.to_wall(t.event_time), request_id=t.transaction_id)
        known = await self._send_labels(tl.live_start)
        log.info(f"bootstrap: {len(history)} payments of {cfg.history_days} simulated days, {written} feature rows "
                 f"pushed, {known} labels sent ({len(self.labels)} still to come)")

        self.champion = await self.platform.champion(cfg.model)
        if self.champion and not cfg.retrain_on_start:
            log.info(f"bootstrap: {cfg.model} already has champion v{self.champion}; not training")
        else:
            # The window ends once every payment in it has its label: the newest payments' chargebacks are
            # still to come, and a window with their settlements but not their chargebacks looks fraud-free.
            settled = tl.live_start - timedelta(hours=max(cfg.chargeback_hours[1], cfg.settlement_hours[1]))
            version = await self._first_run(self.time.to_wall(tl.history_start), self.time.to_wall(settled))
            await self._ensure_champion(version)
        await self._wait_serving()
        return self.champion

    async def _first_run(self, start: datetime, end: datetime) -> int:
        """StartRun over the history window with progress; retried while the trainer still lacks the labels."""
        from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb

        assert self.platform is not None
        params = {"scenario": "live_stable", "note": f"payments demo bootstrap {self.session}",
                  **self.config.run_params}
        if self.config.epochs is not None:
            params["epochs"] = str(self.config.epochs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.label_wait
        while True:
            request = tpb.StartRunRequest(model_name=self.config.model, params=params)
            request.window_start.FromDatetime(start)
            request.window_end.FromDatetime(end)
            run = (await self.platform.trainer.StartRun(request)).run
            log.info(f"training: run {run.run_id} of {self.config.model} on {start:%H:%M:%S}..{end:%H:%M:%S}")
            last_stage = ""
            async for update in self.platform.trainer.WatchRun(tpb.WatchRunRequest(run_id=run.run_id), timeout=900):
                run = update.run
                if update.stage and update.stage != last_stage:
                    last_stage = update.stage
                    log.info(f"training: {update.progress:4.0%} {update.stage}")
            if run.status == tpb.RUN_STATUS_SUCCEEDED:
                metrics = ", ".join(f"{k}={run.metrics[k]:.3f}" for k in ("roc_auc", "f1") if k in run.metrics)
                log.info(f"training: registered {self.config.model}:v{run.registered_version} ({metrics})")
                return int(run.registered_version)
            # The trainer consumes the labels just sent asynchronously: too few rows, or slices without a
            # fraud, mean it has not caught up yet (these failures come before any training, so retrying is cheap).
            if any(s in run.failure_reason for s in RETRYABLE_RUN_FAILURES) and loop.time() < deadline:
                log.info(f"training: the trainer has not seen enough labels yet ({run.failure_reason}); retrying")
                await asyncio.sleep(2.0)
                continue
            raise RuntimeError(f"the first training run failed: {run.failure_reason}")

    async def _ensure_champion(self, version: int) -> None:
        """Automatic promotion from now on; champion = the first version unless an evaluation promoted one."""
        import grpc

        from flywheel.proto.registry.v1 import registry_service_pb2 as reg

        assert self.platform is not None
        model = self.config.model
        await self.platform.registry.SetPromotionPolicy(reg.SetPromotionPolicyRequest(
            model_name=model, mode=reg.PROMOTION_MODE_AUTOMATIC))
        deadline = asyncio.get_running_loop().time() + self.config.champion_wait
        while True:  # an evaluator may promote the first version on its own
            champion = await self.platform.champion(model)
            if champion or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.5)
        if not champion:
            try:
                await self.platform.registry.SetAlias(reg.SetAliasRequest(
                    model_name=model, alias="champion", version=version))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            champion = await self.platform.champion(model)
            log.info(f"bootstrap: champion of {model} set to v{champion} (actor demo-driver)")
        self.champion = champion

    async def _wait_serving(self) -> None:
        assert self.platform is not None
        deadline = asyncio.get_running_loop().time() + self.config.ready_wait
        while not await self.platform.model_ready(self.config.model):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"inference at {self.addresses.inference_addr} does not serve "
                                   f"{self.config.model!r} after {self.config.ready_wait:.0f}s")
            await asyncio.sleep(0.5)

    # -- live --

    async def run(self, *, max_transactions: int | None = None, duration: float | None = None) -> int:
        """Live traffic until stopped, `max_transactions` payments scored, `duration` wall seconds, or the
        timeline's end. On the first call the simulated clock resumes (it stood still during the bootstrap).
        Returns how many payments were scored."""
        loop = asyncio.get_running_loop()
        if not self._live:  # later calls continue the clock (a pause between them is caught up)
            self.time = self.time.resumed(datetime.now(UTC))
            self._live = True
        scored_before = self.stats.total
        ends = loop.time() + duration if duration is not None else math.inf
        log.info(f"live: {self.config.rate:g} payments/s, 1 simulated day = {self.config.day_seconds:g}s; drift "
                 + (f"({self.config.drift}) in {self.config.stable_days * self.config.day_seconds:.0f}s"
                    if self.timeline.onset else "off"))
        while not self._stopping.is_set() and loop.time() < ends:
            done = await self.tick()
            if max_transactions is not None and self.stats.total - scored_before >= max_transactions:
                break
            if done:
                log.info("live: the scenario is over (every simulated day played)")
                break
            self._status_line()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.tick_seconds)
        return self.stats.total - scored_before

    async def tick(self, now: datetime | None = None) -> bool:
        """Push what the pipeline knows by now, score the payments that are due, send due labels.

        Returns True when the timeline is exhausted (nothing left to score or label).
        """
        assert self.platform is not None
        tl = self.timeline
        now = now or datetime.now(UTC)
        sim_now = min(self.time.to_sim(now), tl.end)
        first = self._next_row
        while self._next_row < len(tl.rows) and tl.rows[self._next_row].event_time <= sim_now:
            self._next_row += 1
        if self._next_row > first:
            await self.platform.push([restamp_row(r, self.time) for r in tl.rows[first:self._next_row]])
        due: list[Transaction] = []
        while self._next_txn < len(tl.transactions) and tl.transactions[self._next_txn].event_time <= sim_now:
            due.append(tl.transactions[self._next_txn])
            self._next_txn += 1
        for i in range(0, len(due), self.config.batch_size):
            await self._score(due[i:i + self.config.batch_size])
        await self._send_labels(sim_now)
        return self._next_txn >= len(tl.transactions) and not len(self.labels)

    async def _score(self, batch: list[Transaction]) -> None:
        import grpc

        assert self.platform is not None
        request_id = str(uuid.uuid4())
        phase = self.timeline.phase(batch[0].event_time)
        if phase != self.phase:
            self._enter(phase)
        try:
            version, probabilities, labels = await self.platform.infer(self.config.model, request_id, batch)
        except grpc.aio.AioRpcError as exc:
            self.stats.unscored += len(batch)
            UNSCORED.inc(len(batch))
            log.warning(f"live: {len(batch)} payments not scored: {exc.code().name} {exc.details()}")
            for t in batch:  # the bank still learns the truth; without a prediction the request id is the payment's
                self.labels.add(t, event_wall=self.time.to_wall(t.event_time), request_id=t.transaction_id)
            return
        at = time.time()
        predictions = [Prediction(at, t.transaction_id, request_id, version, float(p), bool(y), t.is_fraud, phase)
                       for t, p, y in zip(batch, probabilities, labels, strict=True)]
        if version and version != self.stats.last_version and self.stats.last_version:
            log.info(f"live: now answered by {self.config.model}:v{version} (was v{self.stats.last_version})")
            self.markers.append({"kind": "serving", "t": at, "version": version})
        self.stats.record(predictions)
        SCORED.labels(str(version)).inc(len(predictions))
        if (accuracy := self.stats.window()["accuracy"]) is not None:
            WINDOW_ACCURACY.set(accuracy)
        for t in batch:
            self.labels.add(t, event_wall=self.time.to_wall(t.event_time), request_id=request_id)

    def _enter(self, phase: str) -> None:
        self.phase = phase
        if phase == DRIFT:
            self.markers.append({"kind": "drift", "t": time.time(), "label": f"drift onset ({self.config.drift})"})
            log.info(f"SCENARIO drift onset: the world switches to {self.config.drift}")
        else:
            log.info(f"SCENARIO phase {phase}")

    async def _send_labels(self, sim_now: datetime) -> int:
        from flywheel.common.kafka import send_events

        due = self.labels.due(sim_now)
        if due:
            await send_events(self._producer, [label_event(p, self.time) for p in due])
            self.stats.labels_sent += len(due)
            LABELS_SENT.inc(len(due))
        return len(due)

    def _status_line(self) -> None:
        every = self.config.status_every
        if not every or time.monotonic() - self._last_status < every:
            return
        self._last_status = time.monotonic()
        w = self.stats.window()
        log.info(f"STATUS phase {self.phase}, serving v{self.stats.last_version}, last {w['n']} payments: "
                 f"accuracy {_fmt(w['accuracy'])}, f1 {_fmt(w['f1'])}, fraud recall {_fmt(w['recall'])}; "
                 f"scored {self.stats.total}, labels sent {self.stats.labels_sent}, waiting {len(self.labels)}")

    # -- narration --

    async def _consume_events(self, ready: asyncio.Event) -> None:
        """Read the watched topics from their latest offsets (a group of its own) and narrate each event.

        The narration is a view that follows the topics on its own schedule, not the platform's record, and
        it keeps going: an event it cannot read or describe (e.g. an enum value newer than this demo) is
        skipped and a broker error retried, both logged, instead of ending the narration for the session."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        from flywheel.common.events import decode
        from flywheel.common.kafka import stop_consumer
        from flywheel.common.topics import topic

        consumer = AIOKafkaConsumer(*WATCHED_TOPICS, bootstrap_servers=self.addresses.kafka_bootstrap,
                                    group_id=f"payments-demo-{self.session}", auto_offset_reset="latest",
                                    enable_auto_commit=True, session_timeout_ms=10_000,
                                    heartbeat_interval_ms=1_000)
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            for tp in consumer.assignment():  # "latest" must mean now, also for partitions without commits
                await consumer.position(tp)
            ready.set()
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    log.warning(f"events: {exc!r}; still listening")
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        try:
                            event = decode(topic(record.topic), record.key, record.value, record.headers)
                            self.on_event(record.topic, event.payload)
                        except Exception as exc:
                            log.warning(f"event on {record.topic} not narrated: {exc!r}")
        finally:
            ready.set()
            await stop_consumer(consumer)

    def on_event(self, topic_name: str, payload: Any) -> None:
        """Narrate one platform event and keep it for the status page (promotions become plot markers)."""
        entry = event_record(topic_name, payload, time.time())
        self.events.append(entry)
        if topic_name == "models.promoted" and payload.alias == "champion" and \
                payload.model_name == self.config.model:
            self.markers.append({"kind": "promotion", "t": entry["at"], "version": payload.version,
                                 "label": f"v{payload.version} promoted"})
        log.info(entry["text"])

    def status(self) -> dict[str, Any]:
        """What the status page shows from the driver's side (the platform's side is added by it)."""
        return {
            "model": self.config.model, "session": self.session, "phase": self.phase,
            "drift": self.config.drift if self.timeline.onset else "none",
            "time": {"day_seconds": self.config.day_seconds, "rate": self.config.rate,
                     "sim_now": self.time.to_sim(datetime.now(UTC)).isoformat(),
                     "onset_wall": self.time.to_wall(self.timeline.onset).timestamp()
                     if self.timeline.onset else None},
            "stats": self.stats.snapshot(),
            "events": list(self.events),
            "markers": list(self.markers),
            "pending_labels": len(self.labels),
        }


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- command line --------------------------------------------------------------------------------------------------


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (e.g. 2,6)") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
    return lo, hi


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    d = DriverConfig()
    p = argparse.ArgumentParser(
        prog="python -m payments_demo drive",
        description="Drive live card payments through a running Flywheel (make run): bootstrap history and a first "
                    "model, then score payments over inference, send their labels seconds later, switch the world "
                    "to a drifted one, and narrate drift alerts, retraining, evaluations and promotions. Service "
                    "addresses come from FLYWHEEL_<SERVICE>_ADDR, Kafka from FLYWHEEL_KAFKA_BOOTSTRAP or "
                    ".flywheel/stack.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="model name (trainer spec, registry, inference)")
    p.add_argument("--rate", type=_positive(float), default=d.rate, help="payments per wall second")
    p.add_argument("--day-seconds", type=_positive(float), default=d.day_seconds,
                   help="wall seconds one simulated day lasts")
    p.add_argument("--history-days", type=_positive(int), default=d.history_days,
                   help="simulated days published at bootstrap and trained on")
    p.add_argument("--warmup-days", type=int, default=d.warmup_days,
                   help="simulated days before the history, only for the 30-day aggregates")
    p.add_argument("--stable-days", type=int, default=d.stable_days, help="live simulated days before the drift")
    p.add_argument("--drift-days", type=int, default=d.drift_days, help="drifted simulated days, then idle")
    p.add_argument("--drift", choices=DRIFTS, default=d.drift, help="how the world changes at the onset")
    p.add_argument("--cloned-card-rate", type=float, default=d.cloned_card_rate,
                   help="concept shift: cloned-card fraud per payment")
    p.add_argument("--chargeback-hours", type=_pair, default=d.chargeback_hours, metavar="LOW,HIGH",
                   help="simulated hours until a fraud's chargeback arrives")
    p.add_argument("--settlement-hours", type=_pair, default=d.settlement_hours, metavar="LOW,HIGH",
                   help="simulated hours until a legit payment settles")
    p.add_argument("--batch-size", type=_positive(int), default=d.batch_size, help="payments per inference request")
    p.add_argument("--window", type=_positive(int), default=d.window, help="payments in the accuracy window")
    p.add_argument("--epochs", type=_positive(int), default=None, help="epochs of the first run (default: the spec)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--retrain-on-start", action="store_true", help="train even if the model has a champion")
    p.add_argument("--max-transactions", type=_positive(int), default=None, help="stop after this many payments")
    p.add_argument("--status-port", type=int, default=None,
                   help="status page port (0 = off; default FLYWHEEL_DEMO_STATUS_PORT or 8090)")
    p.add_argument("--status-every", type=float, default=d.status_every, help="seconds between status lines")
    return p


async def _drive(config: DriverConfig, addresses: Addresses, max_transactions: int | None) -> int:
    from payments_demo.status import StatusPage

    driver = DemoDriver(config, addresses)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, driver.request_stop)
    page = StatusPage(driver, port=addresses.status_port) if addresses.status_port else None
    try:
        await driver.start()
        if page is not None:
            await page.start()
            log.info(f"status page: http://127.0.0.1:{page.port}/")
        await driver.bootstrap()
        await driver.run(max_transactions=max_transactions)
        if max_transactions is None:
            await driver._stopping.wait()  # keep the page up after the scenario, until Ctrl-C
    finally:
        if page is not None:
            await page.stop()
        await driver.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    from flywheel.common.telemetry import setup_logging

    args = parser().parse_args(argv)
    addresses = Addresses.from_env(**({"status_port": args.status_port} if args.status_port is not None else {}))
    setup_logging("payments-demo", addresses.log_level, addresses.log_json if "FLYWHEEL_LOG_JSON" in os.environ
                  else False)
    config = DriverConfig(
        model=args.model, seed=args.seed, day_seconds=args.day_seconds, rate=args.rate,
        warmup_days=args.warmup_days, history_days=args.history_days, stable_days=args.stable_days,
        drift_days=args.drift_days, drift=args.drift, cloned_card_rate=args.cloned_card_rate,
        chargeback_hours=args.chargeback_hours, settlement_hours=args.settlement_hours, batch_size=args.batch_size,
        window=args.window, epochs=args.epochs, status_every=args.status_every,
        retrain_on_start=args.retrain_on_start)
    try:
        return asyncio.run(_drive(config, addresses, args.max_transactions))
    except RuntimeError as exc:
        log.error(f"demo driver: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
