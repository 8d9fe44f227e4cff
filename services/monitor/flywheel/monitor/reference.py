"""Reference data of a model version, downloaded once from the registry and cached."""

from __future__ import annotations

import asyncio

import grpc

from flywheel.common import rpc
from flywheel.common.errors import NotFound, Unavailable
from flywheel.monitor.analysis import Reference, read_reference
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc


class ReferenceCache:
    """Artifacts are immutable per version, so a version's reference never needs refreshing."""

    def __init__(self, registry_addr: str, *, download_timeout: float = 120.0) -> None:
        self.registry_addr = registry_addr
        self.download_timeout = download_timeout
        self._cache: dict[tuple[str, int], Reference] = {}
        self._lock = asyncio.Lock()

    async def get(self, model_name: str, version: int) -> Reference:
        key = (model_name, version)
        if key in self._cache:
            return self._cache[key]
        async with self._lock:
            if key not in self._cache:
                data = await self._download(model_name, version)
                self._cache[key] = await asyncio.to_thread(read_reference, data)
        return self._cache[key]

    async def _download(self, model_name: str, version: int) -> bytes:
        chunks: list[bytes] = []
        async with rpc.channel(self.registry_addr, default_timeout=self.download_timeout) as channel:
            try:
                stream = reg_grpc.RegistryServiceStub(channel).DownloadArtifact(reg.DownloadArtifactRequest(
                    ref=reg.ModelVersionRef(model_name=model_name, version=version)), timeout=self.download_timeout)
                async for message in stream:
                    if message.WhichOneof("part") == "chunk":
                        chunks.append(message.chunk)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise NotFound(f"{model_name} v{version}: {exc.details()}") from exc
                raise Unavailable(f"registry at {self.registry_addr}: {exc.code().name} {exc.details()}") from exc
        return b"".join(chunks)
