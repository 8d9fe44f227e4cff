"""The trainer's two dependencies, as ports with gRPC adapters: the feature store
(point-in-time training sets) and the registry (champion lookup, registration).

Adapters turn gRPC statuses into domain errors whose message says which service
failed and why, so a failed run's reason is readable as is.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from flywheel.common import rpc
from flywheel.common.errors import FailedPrecondition, FlywheelError, InvalidArgument, NotFound, Unavailable
from flywheel.proto.events.v1 import features_pb2
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fs_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc

UPLOAD_CHUNK = 1 << 20
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def domain_error(service: str, address: str, exc: grpc.aio.AioRpcError) -> FlywheelError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{service}: {details}")
    if code in TRANSIENT:
        return Unavailable(f"{service} at {address} did not answer ({code.name}): {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"{service} refused the request: {details}")
    return FailedPrecondition(f"{service} failed ({code.name}): {details}")


@dataclass
class TrainingFeatures:
    """Feature values for entity rows, in request order: `rows[i][j]` is feature `names[j]` of row i."""

    names: list[str]
    rows: list[list[Any]]


def feature_value(value: features_pb2.FeatureValue, status: int) -> Any:
    if status in (fs.FEATURE_STATUS_NOT_FOUND, fs.FEATURE_STATUS_OUTSIDE_MAX_AGE):
        return None
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _same_row(echo: fs.EntityRow, sent: fs.EntityRow) -> bool:
    """Whether an echoed row is the row sent: the keys both carry agree (compared as text)."""
    return all(str(feature_value(v, fs.FEATURE_STATUS_PRESENT)) == str(feature_value(sent.keys[k],
               fs.FEATURE_STATUS_PRESENT)) for k, v in echo.keys.items() if k in sent.keys)


class FeatureSource(abc.ABC):
    """Where training features come from."""

    @abc.abstractmethod
    async def historical(self, feature_service: str, keys: Sequence[dict[str, str | int]],
                         times: Sequence[datetime], progress: Callable[[int], Awaitable[None]] | None = None,
                         ) -> TrainingFeatures:
        """Point-in-time correct values of `feature_service` for each (keys, time), in order."""


class GrpcFeatureStore(FeatureSource):
    def __init__(self, address: str, *, timeout: float, page_size: int = 5000, request_rows: int = 100) -> None:
        """`timeout` bounds each GetHistoricalFeatures call; each asks for at most `request_rows` entity rows."""
        self.address = address
        self.timeout = timeout
        self.page_size = page_size
        self.request_rows = max(1, request_rows)

    async def historical(self, feature_service: str, keys: Sequence[dict[str, str | int]],
                         times: Sequence[datetime], progress: Callable[[int], Awaitable[None]] | None = None,
                         ) -> TrainingFeatures:
        names: list[str] | None = None
        rows: list[list[Any]] = []
        async with rpc.channel(self.address, default_timeout=self.timeout) as channel:
            stub = fs_grpc.FeatureStoreServiceStub(channel)
            for start in range(0, len(keys), self.request_rows):
                end = start + self.request_rows
                request = fs.GetHistoricalFeaturesRequest(
                    features=fs.FeatureSelection(feature_service=feature_service), page_size=self.page_size)
                for row_keys, time in zip(keys[start:end], times[start:end], strict=True):
                    row = request.entity_rows.add()
                    for k, v in row_keys.items():
                        if isinstance(v, int):
                            row.keys[k].int64_value = v
                        else:
                            row.keys[k].string_value = v
                    row.event_time.FromDatetime(time)
                expected = len(request.entity_rows)
                got = 0
                try:
                    async for page in stub.GetHistoricalFeatures(request, timeout=self.timeout):
                        if page.feature_names:
                            names = names or list(page.feature_names)
                        if names is None:
                            raise FailedPrecondition("feature store sent rows before naming the features")
                        if len(page.entity_rows) not in (0, len(page.rows)):
                            raise FailedPrecondition("feature store sent a page whose echoed rows do not match")
                        for i, echo in enumerate(page.entity_rows):
                            if got + i >= expected or not _same_row(echo, request.entity_rows[got + i]):
                                raise FailedPrecondition(
                                    f"feature store answered row {start + got + i} out of order")
                        for vector in page.rows:
                            if len(vector.values) != len(names):
                                raise FailedPrecondition(f"feature store sent {len(vector.values)} values for "
                                                         f"{len(names)} features")
                            statuses = list(vector.statuses) or [fs.FEATURE_STATUS_PRESENT] * len(vector.values)
                            rows.append([feature_value(v, s) for v, s in zip(vector.values, statuses, strict=True)])
                        got += len(page.rows)
                        if progress is not None:
                            await progress(start + got)
                except grpc.aio.AioRpcError as exc:
                    raise domain_error("feature store", self.address, exc) from exc
                if got != expected:
                    raise FailedPrecondition(f"feature store returned {got} rows for {expected} entity rows")
        return TrainingFeatures(names or [], rows)


class ModelRegistry(abc.ABC):
    """Where trained versions go."""

    @abc.abstractmethod
    async def version_of_alias(self, model_name: str, alias: str) -> int:
        """The version an alias points at; 0 if the model or alias does not exist."""

    @abc.abstractmethod
    async def register(self, spec: reg.ModelVersionSpec, artifact: bytes) -> reg.ModelVersion: ...

    @abc.abstractmethod
    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        """The newest version tagged key=value (None if none, or the model is unknown)."""


class GrpcRegistry(ModelRegistry):
    def __init__(self, address: str, *, timeout: float, upload_timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.upload_timeout = upload_timeout

    async def version_of_alias(self, model_name: str, alias: str) -> int:
        async with rpc.channel(self.address, default_timeout=self.timeout) as channel:
            try:
                response = await reg_grpc.RegistryServiceStub(channel).GetModelVersion(
                    reg.GetModelVersionRequest(ref=reg.ModelVersionRef(model_name=model_name, alias=alias)))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return 0
                raise domain_error("registry", self.address, exc) from exc
        return response.model_version.version

    async def register(self, spec: reg.ModelVersionSpec, artifact: bytes) -> reg.ModelVersion:
        async def messages() -> AsyncIterator[reg.RegisterModelVersionRequest]:
            yield reg.RegisterModelVersionRequest(spec=spec)
            for start in range(0, len(artifact), UPLOAD_CHUNK):
                yield reg.RegisterModelVersionRequest(chunk=artifact[start:start + UPLOAD_CHUNK])

        async with rpc.channel(self.address, default_timeout=self.upload_timeout) as channel:
            try:
                response = await reg_grpc.RegistryServiceStub(channel).RegisterModelVersion(
                    messages(), timeout=self.upload_timeout)
            except grpc.aio.AioRpcError as exc:
                raise domain_error("registry", self.address, exc) from exc
        return response.model_version

    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        async with rpc.channel(self.address, default_timeout=self.timeout) as channel:
            try:
                response = await reg_grpc.RegistryServiceStub(channel).ListModelVersions(
                    reg.ListModelVersionsRequest(model_name=model_name, tags={key: value}, page_size=1))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise domain_error("registry", self.address, exc) from exc
        return response.model_versions[0] if response.model_versions else None
