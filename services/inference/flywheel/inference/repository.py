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

import grpc
from prometheus_client import Gauge

from flywheel.common import rpc
from flywheel.inference.dataplane import ModelSlot
from flywheel.inference.model import LoadedModel, load_artifact
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

LOADED_VERSION = Gauge("flywheel_inference_loaded_version", "Version loaded per model and alias (0 = none).",
                       ["model", "alias"])


class Repository:
    def __init__(self, slots: dict[str, ModelSlot], registry_addr: str, *, load_timeout_s: float = 120.0) -> None:
        self.slots = slots
        self.registry_addr = registry_addr
        self.load_timeout_s = load_timeout_s
        self.channel: grpc.aio.Channel | None = None
        self.stub: rpb_grpc.RegistryServiceStub | None = None
        self._locks = {name: asyncio.Lock() for name in slots}
        self._pending: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        self._retry_tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.channel = rpc.channel(self.registry_addr, default_timeout=self.load_timeout_s)
        self.stub = rpb_grpc.RegistryServiceStub(self.channel)

    async def stop(self) -> None:
        for task in [*self._pending.values(), *self._retry_tasks]:
            task.cancel()
        for task in [*self._pending.values(), *self._retry_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.channel is not None:
            await self.channel.close()

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
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                self.slots[name].load_error = f"{type(exc).__name__}: {detail}"  # shown by the repository index
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
                version = await self._resolve(name, alias)
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

    async def _resolve(self, name: str, alias: str) -> int:
        assert self.stub is not None
        try:
            response = await self.stub.GetModelVersion(
                rpb.GetModelVersionRequest(ref=rpb.ModelVersionRef(model_name=name, alias=alias)), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return int(response.model_version.version)

    async def _load(self, name: str, version: int) -> LoadedModel:
        assert self.stub is not None
        chunks: list[bytes] = []
        call = self.stub.DownloadArtifact(
            rpb.DownloadArtifactRequest(ref=rpb.ModelVersionRef(model_name=name, version=version)),
            timeout=self.load_timeout_s)
        async for part in call:
            if part.WhichOneof("part") == "chunk":
                chunks.append(part.chunk)
        data = b"".join(chunks)
        model = await asyncio.to_thread(load_artifact, data, name=name, version=version)  # loads + warms
        log.info("model version loaded", extra={"model": name, "version": version, "bytes": len(data)})
        return model
