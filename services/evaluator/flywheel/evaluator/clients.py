"""The evaluator's view of the registry (versions, aliases, artifacts, lineage) as a port with a
gRPC adapter. Features come from the trainer's feature store client (`flywheel.trainer.clients.GrpcFeatureStore`)."""

from __future__ import annotations

import abc

import grpc

from flywheel.common import rpc
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc
from flywheel.trainer.clients import domain_error


class ModelRegistry(abc.ABC):
    @abc.abstractmethod
    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        """A version by number or alias; None when the model, version or alias does not exist."""

    @abc.abstractmethod
    async def download(self, model_name: str, version: int) -> bytes: ...

    @abc.abstractmethod
    async def add_report_ref(self, model_name: str, version: int, ref: str) -> None:
        """Append an evaluation report reference to the version's lineage (idempotent)."""


class GrpcRegistry(ModelRegistry):
    def __init__(self, address: str, *, timeout: float, download_timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.download_timeout = download_timeout

    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        ref = reg.ModelVersionRef(model_name=model_name, alias=alias) if alias else \
            reg.ModelVersionRef(model_name=model_name, version=version)
        async with rpc.channel(self.address, default_timeout=self.timeout) as channel:
            try:
                response = await reg_grpc.RegistryServiceStub(channel).GetModelVersion(
                    reg.GetModelVersionRequest(ref=ref))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise domain_error("registry", self.address, exc) from exc
        return response.model_version

    async def download(self, model_name: str, version: int) -> bytes:
        chunks: list[bytes] = []
        async with rpc.channel(self.address, default_timeout=self.download_timeout) as channel:
            try:
                stream = reg_grpc.RegistryServiceStub(channel).DownloadArtifact(reg.DownloadArtifactRequest(
                    ref=reg.ModelVersionRef(model_name=model_name, version=version)), timeout=self.download_timeout)
                async for message in stream:
                    if message.WhichOneof("part") == "chunk":
                        chunks.append(message.chunk)
            except grpc.aio.AioRpcError as exc:
                raise domain_error("registry", self.address, exc) from exc
        return b"".join(chunks)

    async def add_report_ref(self, model_name: str, version: int, ref: str) -> None:
        async with rpc.channel(self.address, default_timeout=self.timeout) as channel:
            try:
                await reg_grpc.RegistryServiceStub(channel).RecordLineage(reg.RecordLineageRequest(
                    ref=reg.ModelVersionRef(model_name=model_name, version=version),
                    lineage=common_pb2.Lineage(eval_report_refs=[ref])))
            except grpc.aio.AioRpcError as exc:
                raise domain_error("registry", self.address, exc) from exc
