"""The feature store's typed client: paged point-in-time training sets (`historical`, each echoed row
checked against the row asked for) and online lookups (`online`), plus the FeatureValue conversions
both directions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import FeatureSource, HistoricalFeatures
from flywheel.common.errors import FailedPrecondition
from flywheel.proto.events.v1.features_pb2 import FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fs_grpc

SERVICE = "feature store"
MAX_ONLINE_ROWS = 10_000  # the feature store's limit per GetOnlineFeatures
PRESENT = fs.FEATURE_STATUS_PRESENT
ABSENT = (fs.FEATURE_STATUS_NOT_FOUND, fs.FEATURE_STATUS_OUTSIDE_MAX_AGE)


def feature_value(value: bool | int | float | str | None) -> FeatureValue:
    """A Python value on the wire (None = null)."""
    if value is None:
        return FeatureValue()
    if isinstance(value, bool):
        return FeatureValue(bool_value=value)
    if isinstance(value, int):
        return FeatureValue(int64_value=value)
    if isinstance(value, float):
        return FeatureValue(double_value=value)
    return FeatureValue(string_value=value)


def python_value(value: FeatureValue, status: int = PRESENT) -> Any:
    """A value off the wire; None when it is null, not found or too old."""
    if status in ABSENT:
        return None
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _same_row(echo: fs.EntityRow, sent: fs.EntityRow) -> bool:
    """Whether an echoed row is the row sent: the keys both carry agree (compared as text)."""
    return all(str(python_value(v)) == str(python_value(sent.keys[k])) for k, v in echo.keys.items()
               if k in sent.keys)


@dataclass
class OnlineFeatures:
    """The latest values for entity rows, in request order: `rows[i].values[j]` (with `statuses[j]`) is
    feature `names[j]` of row i."""

    names: list[str]
    rows: list[fs.FeatureVector]


class FeatureStoreClient(ServiceClient, FeatureSource):
    """`timeout` bounds each call. `historical` asks for `request_rows` entity rows per call (the point-in-time
    join grows faster than linearly with the rows of one call) in pages of `page_size`. `keep_channel` keeps
    one channel open (call `close`) for online lookups on a hot path."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 10.0,
                 page_size: int = 5000, request_rows: int = 100, keep_channel: bool = False) -> None:
        self.address = address
        self.timeout = timeout
        self.page_size = page_size
        self.request_rows = max(1, request_rows)
        self._connection = Connection(address, fs_grpc.FeatureStoreServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=keep_channel)

    async def online(self, feature_service: str, rows: Sequence[Mapping[str, FeatureValue]]) -> OnlineFeatures:
        """The online values of `feature_service` for entity rows (keys by name), in calls of at most
        MAX_ONLINE_ROWS rows."""
        names: list[str] = []
        vectors: list[fs.FeatureVector] = []
        async with self._connection.stub() as stub:
            for start in range(0, len(rows), MAX_ONLINE_ROWS):
                request = fs.GetOnlineFeaturesRequest(
                    features=fs.FeatureSelection(feature_service=feature_service),
                    entity_rows=[fs.EntityRow(keys=keys) for keys in rows[start:start + MAX_ONLINE_ROWS]])
                try:
                    response = await stub.GetOnlineFeatures(request, timeout=self.timeout)
                except grpc.aio.AioRpcError as exc:
                    raise rpc.domain_error(SERVICE, self.address, exc) from exc
                names = list(response.feature_names)
                vectors.extend(response.rows)
        return OnlineFeatures(names, vectors)

    async def historical(self, feature_service: str, keys: Sequence[dict[str, str | int]],
                         times: Sequence[datetime], progress: Callable[[int], Awaitable[None]] | None = None,
                         ) -> HistoricalFeatures:
        names: list[str] | None = None
        rows: list[list[Any]] = []
        async with self._connection.stub() as stub:
            for start in range(0, len(keys), self.request_rows):
                end = start + self.request_rows
                request = fs.GetHistoricalFeaturesRequest(
                    features=fs.FeatureSelection(feature_service=feature_service), page_size=self.page_size)
                for row_keys, time in zip(keys[start:end], times[start:end], strict=True):
                    row = request.entity_rows.add()
                    for k, v in row_keys.items():
                        row.keys[k].CopyFrom(feature_value(v))
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
                            statuses = list(vector.statuses) or [PRESENT] * len(vector.values)
                            rows.append([python_value(v, s) for v, s in zip(vector.values, statuses, strict=True)])
                        got += len(page.rows)
                        if progress is not None:
                            await progress(start + got)
                except grpc.aio.AioRpcError as exc:
                    raise rpc.domain_error(SERVICE, self.address, exc) from exc
                if got != expected:
                    raise FailedPrecondition(f"feature store returned {got} rows for {expected} entity rows")
        return HistoricalFeatures(names or [], rows)
