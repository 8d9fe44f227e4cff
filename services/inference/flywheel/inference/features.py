"""Online features by entity ids: one GetOnlineFeatures call per request batch to the feature store
(through `flywheel.common.clients.featurestore`), turned into the model's inputs on the hot path.

A request may carry, instead of the `numeric`/`categorical` tensors, one BYTES input per entity key of
the model's spec; the model's `model.json` names the feature service and the keys, and its input schema
names the columns ("view__feature") exactly as the feature store returns them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flywheel.common import rpc
from flywheel.common.clients.featurestore import PRESENT, FeatureStoreClient
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.proto.events.v1.features_pb2 import FeatureValue

log = logging.getLogger(__name__)


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
    """Online lookups of one inference app through the feature store client (one channel kept open, short
    deadline), failing with what a caller of inference should see: entity ids the store refuses are the
    request's fault (INVALID_ARGUMENT), a feature service it does not serve is this model's misconfiguration
    (FAILED_PRECONDITION), any other failure of the store is UNAVAILABLE (503)."""

    def __init__(self, address: str, *, timeout_s: float = 2.0, auth: rpc.ClientAuth | None = None) -> None:
        self.address = address
        self.client = FeatureStoreClient(address, auth=auth, timeout=timeout_s, keep_channel=True)

    async def close(self) -> None:
        await self.client.close()

    async def online(self, feature_service: str, rows: Sequence[dict[str, FeatureValue]]
                     ) -> tuple[list[str], list[Any]]:
        """(feature names, rows of FeatureVector) for `rows`."""
        try:
            found = await self.client.online(feature_service, rows)
        except NotFound as exc:
            raise FailedPrecondition(f"the feature store does not serve feature service {feature_service!r} "
                                     f"of this model ({exc})") from exc
        except FailedPrecondition as exc:
            log.warning("feature store call failed", extra={"error": str(exc)})
            raise Unavailable(str(exc)) from exc
        return found.names, found.rows


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
