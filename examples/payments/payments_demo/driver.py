"""The live demo driver: card payments flowing through the running platform, in compressed time.

What a bank's systems would do around Flywheel, played by one process so the closed loop can be
watched: the payment switch scores each payment over inference's OIP v2 gRPC API (by entity ids,
after the bank's streaming pipeline pushed the payment's features), and chargebacks/settlements
come back as ground-truth `feedback.received` events a few (wall) seconds later. A scripted
scenario switches the world from `stable` to a drifted one, so the monitor should alert, the
trainer retrain, the evaluator judge and the registry promote a new version, while the driver
measures how well the served versions do.

`DemoDriver` puts the parts together: `bootstrap` (history, first training and promotion), `traffic`
(live scoring and labels over the `timeline`), `stats` (how the versions do), `narration` (the loop's
events) and `clients` (the platform's gRPC stubs). Library use (the platform's loop test does this):

    config = DriverConfig(model="fraud", history_days=3, epochs=5)
    driver = DemoDriver(config, Addresses.from_env())
    await driver.start()                  # channels, producer, event consumer
    version = await driver.bootstrap()    # history, first training run, a champion
    await driver.run(max_transactions=200)
    driver.stats.window()                 # accuracy / f1 / recall of the last K scored payments
    await driver.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import numpy as np

from payments_demo.bootstrap import run_bootstrap
from payments_demo.clients import Platform
from payments_demo.config import Addresses, DriverConfig
from payments_demo.labels import LabelSchedule
from payments_demo.narration import WATCHED_TOPICS, Narration
from payments_demo.stats import LiveStats
from payments_demo.timeline import Timeline, TimeMap, build_timeline
from payments_demo.traffic import Traffic

log = logging.getLogger(__name__)


class DemoDriver:
    """Plays the bank around the platform: bootstrap, then live traffic, labels, and the narration."""

    def __init__(self, config: DriverConfig, addresses: Addresses, *, session: str | None = None,
                 consume_events: bool = True) -> None:
        self.config = config
        self.addresses = addresses
        self.session = session or np.base_repr(int(time.time()), 36).lower()
        self.markers: list[dict[str, Any]] = []  # drift onset and promotions, for the plot
        self._stopping = asyncio.Event()
        self.traffic = Traffic(config, build_timeline(config, self.session), markers=self.markers,
                               stopping=self._stopping)
        self.narration = Narration(config.model, bootstrap_servers=addresses.kafka_bootstrap,
                                   group_id=f"payments-demo-{self.session}", markers=self.markers)
        self.platform: Platform | None = None
        self.champion = 0
        self._consume = consume_events
        self._producer: Any = None
        self._consumer_task: asyncio.Task | None = None
        self.assistant_task: asyncio.Task | None = None

    # -- what the status page and the tests read --

    @property
    def timeline(self) -> Timeline:
        return self.traffic.timeline

    @property
    def time(self) -> TimeMap:
        return self.traffic.time

    @property
    def labels(self) -> LabelSchedule:
        return self.traffic.labels

    @property
    def stats(self) -> LiveStats:
        return self.traffic.stats

    @property
    def phase(self) -> str:
        return self.traffic.phase

    @property
    def events(self) -> deque[dict[str, Any]]:
        return self.narration.events

    # -- life --

    async def start(self) -> None:
        """Connect: gRPC channels, a Kafka producer for labels, the event consumer (latest offsets)."""
        from flywheel.common.kafka import ensure_topics, new_producer
        from flywheel.common.topics import FEEDBACK_RECEIVED, topic

        bootstrap_servers = self.addresses.kafka_bootstrap
        if not bootstrap_servers:
            raise RuntimeError("no Kafka: set FLYWHEEL_KAFKA_BOOTSTRAP or start the embedded stack (make run)")
        self.platform = Platform(self.addresses)
        await ensure_topics(bootstrap_servers, [FEEDBACK_RECEIVED, *(topic(n) for n in WATCHED_TOPICS)])
        self._producer = new_producer(bootstrap_servers, client_id=f"payments-demo-{self.session}")
        await self._producer.start()
        self.traffic.connect(self.platform, self._producer)
        if self._consume:
            ready = asyncio.Event()
            self._consumer_task = asyncio.create_task(self.narration.consume(ready), name="demo-events")
            await asyncio.wait_for(ready.wait(), timeout=30)
            if self._consumer_task.done():  # it failed before listening: say so instead of narrating nothing
                self._consumer_task.result()

    async def stop(self) -> None:
        self._stopping.set()
        if self.assistant_task is not None:
            self.assistant_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.assistant_task
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

    async def stopped(self) -> None:
        """Returns once `stop` or `request_stop` was called (e.g. on Ctrl-C)."""
        await self._stopping.wait()

    # -- the scenario --

    async def bootstrap(self) -> int:
        """History into the feature store and the trainer's labels, a first run, and a champion; returns it.

        Skips the training (not the history) when the model already has a champion, unless
        `retrain_on_start`: a restarted demo keeps serving what the loop promoted.
        """
        assert self.platform is not None, "call start() first"
        on_knowledge = self._start_assistant if self.config.assistant else None
        self.champion = await run_bootstrap(self.platform, self.traffic, self.config, session=self.session,
                                            on_knowledge=on_knowledge)
        return self.champion

    def _start_assistant(self) -> None:
        """The support assistant (base LLM, prompt, application) in the background: the fraud loop does not wait."""
        from payments_demo.assistant import setup_assistant

        assert self.platform is not None

        async def run() -> None:
            try:
                await setup_assistant(self.platform, self.addresses)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the payments loop goes on without the assistant
                log.error(f"assistant: not set up: {exc}")
        if self.assistant_task is None:
            self.assistant_task = asyncio.create_task(run(), name="support-assistant")

    async def run(self, *, max_transactions: int | None = None, duration: float | None = None) -> int:
        """Live traffic until stopped, `max_transactions` payments scored, `duration` wall seconds, or the
        timeline's end. On the first call the simulated clock resumes (it stood still during the bootstrap).
        Returns how many payments were scored."""
        return await self.traffic.run(max_transactions=max_transactions, duration=duration)

    async def tick(self, now: datetime | None = None) -> bool:
        """One step of live traffic (see `Traffic.tick`); True when the timeline is exhausted."""
        return await self.traffic.tick(now)

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
