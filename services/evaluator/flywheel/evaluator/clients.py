"""The evaluator's view of the registry (versions, aliases, artifacts, lineage) as a port with a
gRPC adapter, and a scorer for any `flywheel.predictive/v1` artifact. Features come from the
trainer's feature store client (`flywheel.trainer.clients.GrpcFeatureStore`)."""

from __future__ import annotations

import abc
import io
import json
import tarfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import torch

from flywheel.common import rpc
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc
from flywheel.trainer.artifact import load_model
from flywheel.trainer.clients import domain_error
from flywheel.trainer.model import category_key, numeric_column


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


class Scorer:
    """Scores columns of raw feature values with an artifact's TorchScript module.

    Uses the trainer's `load_model` for trainer-built artifacts, and the artifact's `input_schema`
    (the format's contract: raw numeric values with NaN for missing, categorical vocabulary indices)
    for any other `flywheel.predictive/v1` artifact, e.g. ones built by tools or tests.
    """

    def __init__(self, data: bytes) -> None:
        try:
            self._model: Any = load_model(data)
            self.metadata: dict[str, Any] = self._model.metadata
            self._module = None
        except (KeyError, TypeError):  # no `preprocessing`: not built by the trainer
            self._model = None
            members = _members(data)
            self.metadata = json.loads(members["model.json"])
            if self.metadata.get("format") != "flywheel.predictive/v1":
                found = self.metadata.get("format")
                raise ValueError(f"not a flywheel.predictive/v1 artifact (format {found!r})") from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(io.BytesIO(members["model.pt"]), map_location="cpu").eval()
        schema = self.metadata["input_schema"]
        self.numeric: list[str] = list(schema["numeric"]["features"])
        self.categorical: list[str] = list(schema["categorical"]["features"])
        self.vocab: dict[str, list[str]] = dict(schema["categorical"].get("vocab", {}))

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", 0.5))

    def predict_proba(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        absent = [f for f in self.feature_names if f not in columns]
        if absent:
            raise ValueError(f"the model needs feature(s) {', '.join(absent)}, which the feature service "
                             "does not provide")
        if self._model is not None:
            return self._model.predict_proba(columns)
        rows = len(next(iter(columns.values()), []))
        numeric = np.stack([numeric_column(list(columns[f])) for f in self.numeric], axis=1) if self.numeric \
            else np.zeros((rows, 0))
        indices = []
        for feature in self.categorical:
            lookup = {c: i for i, c in enumerate(self.vocab.get(feature, []))}
            indices.append([lookup.get(category_key(v), len(lookup)) for v in columns[feature]])
        categorical = np.array(indices, dtype=np.int64).T.reshape(rows, len(self.categorical))
        with torch.no_grad():
            out = self._module(torch.from_numpy(numeric.astype(np.float32)), torch.from_numpy(categorical))
        return out.numpy().astype(np.float64)


def _members(data: bytes) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info) if info.isfile() else None
            if handle is not None:
                members[info.name] = handle.read()
    for name in ("model.json", "model.pt"):
        if name not in members:
            raise ValueError(f"artifact lacks {name}")
    return members
