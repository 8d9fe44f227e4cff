"""The bank's traffic through the platform, in compressed time: the history published at once, then live
payments pushed as features and scored over inference when the wall clock reaches them, and their labels
sent to `feedback.received` when the bank learns the truth; every score measured against that truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from payments_demo.clients import Platform
from payments_demo.config import DriverConfig
from payments_demo.generator import Transaction
from payments_demo.labels import LabelSchedule, label_event
from payments_demo.pipeline import CUSTOMER_STATS_LEAD
from payments_demo.stats import LiveStats, Prediction
from payments_demo.timeline import BOOTSTRAP, DRIFT, Timeline, TimeMap, restamp_row

log = logging.getLogger(__name__)

SCORED = Counter("payments_demo_payments_scored_total", "Payments scored over inference, by answering version.",
                 ["version"])
UNSCORED = Counter("payments_demo_payments_unscored_total", "Payments inference did not answer.")
LABELS_SENT = Counter("payments_demo_labels_sent_total", "Ground-truth labels sent to feedback.received.")
WINDOW_ACCURACY = Gauge("payments_demo_window_accuracy", "Accuracy of the last K scored payments.")


class Traffic:
    """Walks the timeline: what is due by the (mapped) wall clock is pushed, scored and labelled.

    `markers` (drift onset, a change of the answering version) is the driver's list for the status page's
    plot; `stopping` ends `run`. `connect` hands over the platform's stubs and the labels' Kafka producer.
    """

    def __init__(self, config: DriverConfig, timeline: Timeline, *, markers: list[dict[str, Any]],
                 stopping: asyncio.Event) -> None:
        self.config = config
        self.timeline = timeline
        self.time = TimeMap.day_per(config.day_seconds, wall_anchor=datetime.now(UTC),
                                    sim_anchor=timeline.live_start)
        self.labels = LabelSchedule()
        self.stats = LiveStats(config.window)
        self.markers = markers
        self.phase = BOOTSTRAP
        self.platform: Platform | None = None
        self._producer: Any = None
        self._stopping = stopping
        self._next_txn = 0
        self._next_row = 0
        self._last_status = time.monotonic()
        self._live = False

    def connect(self, platform: Platform, producer: Any) -> None:
        self.platform = platform
        self._producer = producer

    # -- the history --

    async def publish_history(self) -> None:
        """The history's feature rows into the feature store, its labels known by now to `feedback.received`
        (the rest come later, as the live clock reaches them); its wall times end now."""
        assert self.platform is not None, "connect() first"
        tl = self.timeline
        self.time = replace(self.time, wall_anchor=datetime.now(UTC))
        history = [t for t in tl.transactions if tl.history_start <= t.event_time < tl.live_start]
        rows = [restamp_row(r, self.time) for r in tl.rows
                if tl.history_start - CUSTOMER_STATS_LEAD <= r.event_time < tl.live_start]
        written = await self.platform.push(rows)
        self._next_row = next((i for i, r in enumerate(tl.rows) if r.event_time >= tl.live_start), len(tl.rows))
        self._next_txn = next((i for i, t in enumerate(tl.transactions) if t.event_time >= tl.live_start),
                              len(tl.transactions))
        for t in history:
            self.labels.add(t, event_wall=self.time.to_wall(t.event_time), request_id=t.transaction_id)
        known = await self.send_labels(tl.live_start)
        log.info(f"bootstrap: {len(history)} payments of {self.config.history_days} simulated days, {written} "
                 f"feature rows pushed, {known} labels sent ({len(self.labels)} still to come)")

    def training_window(self) -> tuple[datetime, datetime]:
        """The history's wall-time window to train on. It ends once every payment in it has its label: the newest
        payments' chargebacks are still to come, and a window with their settlements but not their chargebacks
        looks fraud-free."""
        cfg, tl = self.config, self.timeline
        settled = tl.live_start - timedelta(hours=max(cfg.chargeback_hours[1], cfg.settlement_hours[1]))
        return self.time.to_wall(tl.history_start), self.time.to_wall(settled)

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
        await self.send_labels(sim_now)
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

    async def send_labels(self, sim_now: datetime) -> int:
        """Send the labels the bank has learned by `sim_now`; returns how many."""
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


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
