"""Online features by entity ids: one GetOnlineFeatures call per request batch to the feature store.

A request may carry, instead of the `numeric`/`categorical` tensors, one BYTES input per entity key of
the model's spec; the model's `model.json` names the feature service and the keys, and its input schema
names the columns ("view__feature") exactly as the feature store returns them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from flywheel.common import rpc
from flywheel.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from flywheel.proto.events.v1.features_pb2 import FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fpb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fpb_grpc

log = logging.getLogger(__name__)

PRESENT = fpb.FEATURE_STATUS_PRESENT
MAX_ROWS_PER_CALL = 10_000  # the feature store's limit per GetOnlineFeatures


def key_value(text: bytes | str | int, key_type: str, name: str) -> FeatureValue:
    """One entity id as the FeatureValue the feature store wants (string unless the spec says int64)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if key_type == "int64":
        try:
            return FeatureValue(int64_value=int(text))
        except ValueError:
            raise InvalidArgument(f"input {name!r}: entity id {text!r} is not an integer (the key is int64)") from None
    return FeatureValue(string_value=str(text))


def as_float(value: FeatureValue) -> float:
    kind = value.WhichOneof("value")
    if kind == "double_value":
        return value.double_value
    if kind == "int64_value":
        return float(value.int64_value)
    if kind == "bool_value":
        return 1.0 if value.bool_value else 0.0
    if kind == "string_value":
        try:
            return float(value.string_value)
        except ValueError:
            return math.nan
    return math.nan


def as_bytes(value: FeatureValue) -> bytes:
    kind = value.WhichOneof("value")
    if kind is None:
        return b""  # missing -> "other"
    if kind == "string_value":
        return value.string_value.encode()
    if kind == "bool_value":
        return b"true" if value.bool_value else b"false"
    return str(getattr(value, kind)).encode()


class FeatureClient:
    """The feature store client of one inference app: one channel (opened on first use), short deadline."""

    def __init__(self, address: str, *, timeout_s: float = 2.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: fpb_grpc.FeatureStoreServiceStub | None = None

    def stub(self) -> fpb_grpc.FeatureStoreServiceStub:
        if self._stub is None:
            self._channel = rpc.channel(self.address, default_timeout=self.timeout_s)
            self._stub = fpb_grpc.FeatureStoreServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def online(self, feature_service: str, rows: Sequence[dict[str, FeatureValue]]
                     ) -> tuple[list[str], list[Any]]:
        """(feature names, rows of FeatureVector) for `rows` (in calls of at most MAX_ROWS_PER_CALL rows)."""
        names: list[str] = []
        out: list[Any] = []
        for start in range(0, len(rows), MAX_ROWS_PER_CALL):
            request = fpb.GetOnlineFeaturesRequest(
                features=fpb.FeatureSelection(feature_service=feature_service),
                entity_rows=[fpb.EntityRow(keys=keys) for keys in rows[start:start + MAX_ROWS_PER_CALL]])
            try:
                response = await self.stub().GetOnlineFeatures(request)
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc, feature_service) from exc
            names = list(response.feature_names)
            out.extend(response.rows)
        return names, out

    def _error(self, exc: grpc.aio.AioRpcError, feature_service: str) -> Exception:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"the feature store rejected the entity ids: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return FailedPrecondition(f"the feature store does not serve feature service {feature_service!r} "
                                      f"of this model: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(f"the feature store at {self.address} did not answer within {self.timeout_s}s")
        log.warning("feature store call failed", extra={"code": code.name, "error": details})
        return Unavailable(f"the feature store at {self.address} is unavailable ({code.name}): {details}")


def to_matrices(names: list[str], rows: list[Any], numeric: list[str], categorical: list[str],
                feature_service: str) -> tuple[np.ndarray, list[bytes]]:
    """The fetched columns as the numeric float32 [N, n] matrix (missing -> NaN) and the categorical strings
    [N * k] row-major (missing -> b"", i.e. other)."""
    index = {name: j for j, name in enumerate(names)}
    absent = [f for f in (*numeric, *categorical) if f not in index]
    if absent:
        raise FailedPrecondition(f"feature service {feature_service!r} does not return the model's feature(s) "
                                 f"{', '.join(absent)} (it returns {', '.join(names) or 'nothing'})")
    num_idx = [index[f] for f in numeric]
    cat_idx = [index[f] for f in categorical]
    matrix = np.full((len(rows), len(numeric)), np.nan, dtype=np.float32)
    strings: list[bytes] = []
    for i, row in enumerate(rows):
        values, statuses = row.values, row.statuses
        for c, j in enumerate(num_idx):
            if statuses[j] == PRESENT:
                matrix[i, c] = as_float(values[j])
        for j in cat_idx:
            strings.append(as_bytes(values[j]) if statuses[j] == PRESENT else b"")
    return matrix, strings
