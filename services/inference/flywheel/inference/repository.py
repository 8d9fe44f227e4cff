"""Model loading and hot swap: the registry is the source of truth for which version each alias
points at. `reconcile(name)` resolves `champion` (and `challenger` when the route needs it),
downloads and loads (in a worker thread) and warms what changed, then swaps it in with one
reference assignment. Requests hold the reference they started with, so in-flight requests
finish on their version. Reconciles of one model are serialized and coalesced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Gauge

from flywheel.common.clients.ports import ModelRegistry
from flywheel.inference.dataplane import ModelSlot
from flywheel.inference.model import LoadedModel, load_artifact

log = logging.getLogger(__name__)

LOADED_VERSION = Gauge("flywheel_inference_loaded_version", "Version loaded per model and alias (0 = none).",
                       ["model", "alias"])


class Repository:
    def __init__(self, slots: dict[str, ModelSlot], registry: ModelRegistry) -> None:
        """`registry` is this repository's own: `stop` closes it."""
        self.slots = slots
        self.registry = registry
        self._locks = {name: asyncio.Lock() for name in slots}
        self._pending: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        self._retry_tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Nothing to open: the registry client connects on first use."""

    async def stop(self) -> None:
        for task in [*self._pending.values(), *self._retry_tasks]:
            task.cancel()
        for task in [*self._pending.values(), *self._retry_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.registry.close()

    def schedule(self, name: str) -> None:
        """Reconcile `name` soon (coalesced: at most one running and one queued per model)."""
        if name not in self.slots:
            return
        task = self._pending.get(name)
        if task is not None and not task.done():
            self._again.add(name)
            return
        self._pending[name] = asyncio.create_task(self._reconcile_loop(name), name=f"reconcile-{name}")

    async def wait_idle(self) -> None:
        while any(not t.done() for t in self._pending.values()):
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    async def _reconcile_loop(self, name: str) -> None:
        while True:
            self._again.discard(name)
            try:
                await self.reconcile(name)
                self.slots[name].load_error = ""
            except Exception as exc:
                self.slots[name].load_error = f"{type(exc).__name__}: {exc}"  # shown by the repository index
                log.warning("model reconcile failed, retrying in 2s", extra={"model": name, "error": repr(exc)})
                await asyncio.sleep(2.0)
                self._again.add(name)
            if name not in self._again:
                return

    async def reconcile(self, name: str) -> None:
        slot = self.slots[name]
        async with self._locks[name]:
            aliases = ["champion"] + (["challenger"] if slot.route.mode != "champion" else [])
            for alias in aliases:
                current: LoadedModel | None = getattr(slot, alias)
                version = await self.registry.version_of(name, alias)
                if version == 0:
                    if current is not None and alias == "challenger":
                        slot.challenger = None  # the challenger alias was deleted
                    LOADED_VERSION.labels(name, alias).set(current.version if current and alias == "champion" else 0)
                    continue
                if current is not None and current.version == version:
                    continue
                # Reuse the other arm's copy when it is that version (e.g. challenger promoted to champion).
                other = slot.challenger if alias == "champion" else slot.champion
                if other is not None and other.version == version:
                    model = other
                else:
                    slot.loading = version  # the repository index reports it as LOADING meanwhile
                    try:
                        model = await self._load(name, version)
                    finally:
                        slot.loading = 0
                setattr(slot, alias, model)  # the swap: one reference assignment
                LOADED_VERSION.labels(name, alias).set(version)
                log.info("model version live", extra={"model": name, "alias": alias, "version": version,
                                                      "previous": current.version if current else 0})

    async def _load(self, name: str, version: int) -> LoadedModel:
        data = await self.registry.download(name, version)
        model = await asyncio.to_thread(load_artifact, data, name=name, version=version)  # loads + warms
        log.info("model version loaded", extra={"model": name, "version": version, "bytes": len(data)})
        return model
