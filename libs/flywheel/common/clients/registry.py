"""The registry's typed client: versions by number, alias or tag, chunked sha256-checked uploads and
downloads, lineage and metrics. The chunk iterators are public for callers that stream themselves
(a progress bar, a test of the raw RPC)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import ArtifactSource, ModelRegistry
from flywheel.common.errors import FailedPrecondition, NotFound, Unavailable
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc

SERVICE = "registry"
CHUNK = 1 << 20  # bytes per upload message (the registry answers downloads in its own chunks)
T = TypeVar("T")


def version_ref(model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersionRef:
    """A reference to a version by number, or by alias when `alias` is set."""
    if alias:
        return reg.ModelVersionRef(model_name=model_name, alias=alias)
    return reg.ModelVersionRef(model_name=model_name, version=version)


def byte_chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def file_chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


async def upload_requests(spec: reg.ModelVersionSpec, chunks: Iterable[bytes] | AsyncIterable[bytes],
                          ) -> AsyncIterator[reg.RegisterModelVersionRequest]:
    """The RegisterModelVersion request stream: the spec, then the artifact's chunks."""
    yield reg.RegisterModelVersionRequest(spec=spec)
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield reg.RegisterModelVersionRequest(chunk=chunk)
    else:
        for chunk in chunks:
            yield reg.RegisterModelVersionRequest(chunk=chunk)


@dataclass
class ArtifactDownload:
    """A download under way: the version (first message of the stream), then its artifact's chunks."""

    version: reg.ModelVersion
    _stream: AsyncIterator[reg.DownloadArtifactResponse]
    _errors: Callable[[grpc.aio.AioRpcError], Exception]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The artifact's bytes in order; Unavailable at the end when they do not hash to the version's sha256."""
        digest = hashlib.sha256()
        try:
            async for message in self._stream:
                if message.WhichOneof("part") == "chunk":
                    digest.update(message.chunk)
                    yield message.chunk
        except grpc.aio.AioRpcError as exc:
            raise self._errors(exc) from exc
        expected = self.version.artifact.sha256
        if expected and digest.hexdigest() != expected:
            raise Unavailable(f"the download of {self.version.model_name} v{self.version.version} is corrupt: its "
                              f"bytes hash to {digest.hexdigest()}, the registry says {expected}; download it again")


class RegistryClient(ServiceClient, ModelRegistry):
    """`timeout` bounds each short call, `transfer_timeout` an upload or a download. `keep_channel` keeps
    one channel open (call `close`) instead of one per call."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 10.0,
                 transfer_timeout: float = 300.0, keep_channel: bool = False) -> None:
        self.address = address
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self._connection = Connection(address, reg_grpc.RegistryServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=keep_channel)

    def _error(self, exc: grpc.aio.AioRpcError) -> Exception:
        return rpc.domain_error(SERVICE, self.address, exc)

    async def _call(self, call: Callable[[reg_grpc.RegistryServiceStub], Awaitable[T]]) -> T:
        async with self._connection.stub() as stub:
            try:
                return await call(stub)
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc) from exc

    async def _find(self, call: Callable[[reg_grpc.RegistryServiceStub], Awaitable[T]]) -> T | None:
        """`_call`, with None when the registry answers NOT_FOUND."""
        try:
            return await self._call(call)
        except NotFound:
            return None

    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        request = reg.GetModelVersionRequest(ref=version_ref(model_name, version, alias))
        response = await self._find(lambda s: s.GetModelVersion(request, timeout=self.timeout))
        return response.model_version if response is not None else None

    async def list_versions(self, model_name: str, *, tags: Mapping[str, str] | None = None, page_size: int = 0,
                            page_token: str = "") -> tuple[list[reg.ModelVersion], str]:
        """One page of a model's versions, newest first, and the next page's token ("" = the last page)."""
        request = reg.ListModelVersionsRequest(model_name=model_name, tags=dict(tags or {}), page_size=page_size,
                                               page_token=page_token)
        response = await self._call(lambda s: s.ListModelVersions(request, timeout=self.timeout))
        return list(response.model_versions), response.next_page_token

    async def models_with_alias(self, alias: str) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            request = reg.ListModelsRequest(page_size=1000, page_token=token)
            response = await self._call(lambda s, r=request: s.ListModels(r, timeout=self.timeout))
            names += [m.name for m in response.models if alias in m.aliases]
            token = response.next_page_token
            if not token:
                return names

    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        try:
            versions, _ = await self.list_versions(model_name, tags={key: value}, page_size=1)
        except NotFound:
            return None
        return versions[0] if versions else None

    async def register(self, spec: reg.ModelVersionSpec, artifact: ArtifactSource, *,
                       on_progress: Callable[[int], None] | None = None) -> reg.ModelVersion:
        """Upload in chunks. For bytes and files the registry is told the sha256 and checks it before it
        stores anything; chunks streamed by the caller are hashed on the way and checked against its answer."""
        if isinstance(artifact, bytes | Path) and not spec.artifact_uri and not spec.expected_sha256:
            told = reg.ModelVersionSpec()
            told.CopyFrom(spec)
            told.expected_sha256 = (hashlib.sha256(artifact).hexdigest() if isinstance(artifact, bytes)
                                    else await asyncio.to_thread(file_sha256, artifact))
            spec = told
        source = byte_chunks(artifact) if isinstance(artifact, bytes) else \
            file_chunks(artifact) if isinstance(artifact, Path) else artifact
        digest = hashlib.sha256()

        def sent(chunk: bytes) -> bytes:
            digest.update(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
            return chunk

        async def chunks() -> AsyncIterator[bytes]:
            if isinstance(source, AsyncIterable):
                async for chunk in source:
                    yield sent(chunk)
            else:
                for chunk in source:
                    yield sent(chunk)

        async with self._connection.stub() as stub:
            try:
                response = await stub.RegisterModelVersion(upload_requests(spec, chunks()),
                                                           timeout=self.transfer_timeout)
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc) from exc
        version = response.model_version
        if not spec.artifact_uri and version.artifact.sha256 not in ("", digest.hexdigest()):
            raise FailedPrecondition(f"registry stored {version.model_name} v{version.version} with sha256 "
                                     f"{version.artifact.sha256}, but the bytes sent hash to {digest.hexdigest()}")
        return version

    @contextlib.asynccontextmanager
    async def open_download(self, model_name: str, version: int = 0, alias: str = "",
                            ) -> AsyncIterator[ArtifactDownload]:
        """A version's artifact as a stream of chunks (read them inside the block)."""
        request = reg.DownloadArtifactRequest(ref=version_ref(model_name, version, alias))
        async with self._connection.stub() as stub:
            call = stub.DownloadArtifact(request, timeout=self.transfer_timeout)
            stream = aiter(call)
            try:
                first = await anext(stream, None)
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc) from exc
            try:
                if first is None or first.WhichOneof("part") != "model_version":
                    raise FailedPrecondition(f"registry at {self.address} sent no version before the artifact of "
                                             f"{model_name} {alias or version}")
                yield ArtifactDownload(first.model_version, stream, self._error)
            finally:
                call.cancel()  # a no-op once the stream was read to its end

    async def download(self, model_name: str, version: int = 0, alias: str = "") -> bytes:
        async with self.open_download(model_name, version, alias) as download:
            return b"".join([chunk async for chunk in download.chunks()])

    async def record_lineage(self, model_name: str, version: int, lineage: common_pb2.Lineage) -> reg.ModelVersion:
        request = reg.RecordLineageRequest(ref=version_ref(model_name, version), lineage=lineage)
        response = await self._call(lambda s: s.RecordLineage(request, timeout=self.timeout))
        return response.model_version

    async def record_metrics(self, model_name: str, version: int, metrics: Mapping[str, float]) -> reg.ModelVersion:
        request = reg.RecordMetricsRequest(ref=version_ref(model_name, version), metrics=dict(metrics))
        response = await self._call(lambda s: s.RecordMetrics(request, timeout=self.timeout))
        return response.model_version
