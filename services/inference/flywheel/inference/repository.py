"""Model loading and hot swap: the registry is the source of truth for which version each alias
points at. `reconcile(name)` resolves `champion` (and `challenger` when the route needs it),
downloads and loads (in a worker thread) and warms what changed, then swaps it in with one
reference assignment. Requests hold the reference they started with, so in-flight requests
finish on their version. Reconciles of one model are serialized and coalesced.

Which models: a configured list, or (no list) every model that has a champion in the registry, found
at start and whenever `models.promoted` names a model not served yet. Predictive models are served
here (slots); a model whose champion is an LLM or a LoRA adapter is handed to the LLM service
(`flywheel.inference.llm.service`), which loads it next to its base.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.tasks import cancel_and_wait
from flywheel.inference.dataplane import ModelSlot
from flywheel.inference.model import LoadedModel, load_artifact
from flywheel.proto.events.v1 import common_pb2

if TYPE_CHECKING:
    from flywheel.inference.llm.service import LLMService

log = logging.getLogger(__name__)

LOADED_VERSION = Gauge("flywheel_inference_loaded_version", "Version loaded per model and alias (0 = none).",
                       ["model", "alias"])


# What the OIP slots serve; LLMs and adapters go to the LLM service, embeddings are served elsewhere.
SERVED_KINDS = (common_pb2.MODEL_KIND_PREDICTIVE, common_pb2.MODEL_KIND_UNSPECIFIED)
LLM_KINDS = (common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER)


class Repository:
    def __init__(self, slots: dict[str, ModelSlot], registry: ModelRegistry, *,
                 new_slot: Callable[[str], ModelSlot] | None = None, llm: LLMService | None = None) -> None:
        """`registry` is this repository's own: `stop` closes it. `new_slot`: serve every model with a champion
        (a slot is made for each predictive one on first sight); None: only the models in `slots`. `llm`: the
        LLM service models of kind LLM / LoRA adapter are handed to (None: they are not served)."""
        self.slots = slots
        self.registry = registry
        self.new_slot = new_slot
        self.llm = llm
        self._llm_names: set[str] = set()  # names whose champion was an LLM or adapter
        self._locks = {name: asyncio.Lock() for name in slots}
        self._pending: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        self._retry_tasks: set[asyncio.Task] = set()
        self._discovery: asyncio.Task | None = None

    async def start(self) -> None:
        """Schedule every configured model, or (none configured) every model with a champion: found in the
        background, retried until the registry answers, so inference can start before the registry."""
        for name in list(self.slots):
            self.schedule(name)
        if self.new_slot is not None:
            self._discovery = asyncio.create_task(self._discover(), name="discover-models")

    async def _discover(self) -> None:
        while True:
            try:
                names = await self.registry.models_with_alias("champion")
            except Exception as exc:
                log.warning("listing the registry's models failed, retrying in 2s", extra={"error": repr(exc)})
                await asyncio.sleep(2.0)
                continue
            for name in names:
                self.schedule(name)
            return

    async def stop(self) -> None:
        await cancel_and_wait([*self._pending.values(), *self._retry_tasks, self._discovery])
        if self.llm is not None:
            await self.llm.stop()
        await self.registry.close()

    def schedule(self, name: str) -> None:
        """Reconcile `name` soon (coalesced: at most one running and one queued per model)."""
        if name not in self.slots and name not in self._llm_names and self.new_slot is None:
            return
        task = self._pending.get(name)
        if task is not None and not task.done():
            self._again.add(name)
            return
        self._pending[name] = asyncio.create_task(self._reconcile_loop(name), name=f"reconcile-{name}")

    async def wait_idle(self) -> None:
        """Until discovery (if any) and every scheduled reconcile have finished."""
        if self._discovery is not None:
            await asyncio.gather(self._discovery, return_exceptions=True)
        while any(not t.done() for t in self._pending.values()):
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    async def _reconcile_loop(self, name: str) -> None:
        backoff = 2.0
        while True:
            self._again.discard(name)
            try:
                await self.reconcile(name)
            except Exception as exc:
                if name in self.slots:
                    self.slots[name].load_error = f"{type(exc).__name__}: {exc}"  # shown by the repository index
                log.warning("model reconcile failed, retrying", extra={"model": name, "error": repr(exc),
                                                                       "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)  # a broken artifact is retried, ever more slowly
                self._again.add(name)
            if name not in self._again:
                return

    async def reconcile(self, name: str) -> None:
        if name in self._llm_names or name not in self.slots or not self.slots[name].versions():
            # Not a predictive model being served: it may be (or have been) an LLM or an adapter.
            if await self._llm_model(name):
                return
        if name not in self.slots:
            if self.new_slot is None:
                return
            self.slots[name] = self.new_slot(name)  # a model seen for the first time
        slot = self.slots[name]
        async with self._locks.setdefault(name, asyncio.Lock()):
            slot.load_error = ""
            aliases = ["champion"] + (["challenger"] if slot.route.mode != "champion" else [])
            for alias in aliases:
                current: LoadedModel | None = getattr(slot, alias)
                found = await self.registry.get_version(name, alias=alias)
                if found is not None and found.kind not in SERVED_KINDS:
                    self._not_served(name, found.kind)
                    return
                version = found.version if found is not None else 0
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
            if self.new_slot is not None and not slot.versions():
                del self.slots[name]  # discovered, but no champion (any more): not served

    async def _llm_model(self, name: str) -> bool:
        """Hand `name` to the LLM service when its champion is an LLM or adapter, or it was one; True if so."""
        found = await self.registry.get_version(name, alias="champion")
        is_llm = found is not None and found.kind in LLM_KINDS
        if not is_llm and name not in self._llm_names:
            return False
        if self.llm is None:
            if is_llm and name in self.slots:
                self.slots[name].load_error = "LLMs are not served by this inference (llm_enabled is off)"
            return is_llm
        self.llm.schedule(name)
        if is_llm:
            self._llm_names.add(name)
            slot = self.slots.get(name)
            if slot is not None and not slot.versions():
                del self.slots[name]  # served by the LLM service, not an OIP slot
        else:
            self._llm_names.discard(name)  # no champion any more (the LLM service unloads it), or another kind
        return is_llm or found is None

    def _not_served(self, name: str, kind: int) -> None:
        """A model of another kind: a discovered one stops being served, a configured one says why."""
        reason = f"{common_pb2.ModelKind.Name(kind)}: inference serves predictive models"  # type: ignore[arg-type]
        if self.new_slot is not None and not self.slots[name].versions():
            del self.slots[name]
            log.info("model not served", extra={"model": name, "reason": reason})
        else:
            self.slots[name].load_error = reason

    async def _load(self, name: str, version: int) -> LoadedModel:
        data = await self.registry.download(name, version)
        model = await asyncio.to_thread(load_artifact, data, name=name, version=version)  # loads + warms
        log.info("model version loaded", extra={"model": name, "version": version, "bytes": len(data)})
        return model
