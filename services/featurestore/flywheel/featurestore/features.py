"""The feature store's use cases, free of any transport: gRPC and the features.updates consumer both come
through here. Feast does the feature work (registry, point-in-time joins, online reads and writes,
materialization); this layer checks requests against the applied repo, converts values, keeps the offline
tables Feast cannot write, and runs Feast's blocking calls off the event loop.

Feast calls block, and a Feast `FeatureStore` is not documented as thread-safe, so they run on dedicated
threads: online reads on a small pool (each read takes its own connection from the online store's pool and
only reads the registry cache), writes (apply, push, materialize) on one thread, so they never interleave,
and historical retrievals on their own threads, so a long training-set query never delays serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import psycopg
from feast import FeatureStore, RepoConfig
from feast.data_source import PushMode
from feast.diff.registry_diff import extract_objects_for_keep_delete_update_add
from feast.errors import FeastObjectNotFoundException
from feast.infra.registry.registry import FEAST_OBJECT_TYPES
from feast.value_type import ValueType
from prometheus_client import Counter, Histogram
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument, NotFound, PoisonEvent, Unavailable
from flywheel.featurestore import convert
from flywheel.featurestore.catalog import Catalog, PushTarget, ResolvedSelection, Selection
from flywheel.featurestore.repo import RepoObjects, load_repo
from flywheel.featurestore.store import (
    append_rows,
    apply_lock,
    created_times,
    ensure_tables,
    record_apply,
    source_tables,
)
from flywheel.proto.events.v1.features_pb2 import FeaturesUpdated, FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

SOURCE = "flywheel/featurestore"
MAX_ONLINE_ROWS = 10_000
DEFAULT_PAGE = 5_000
MAX_PAGE = 50_000
# Entity rows per Feast historical query; pages are cut from each query's result.
HISTORICAL_CHUNK = 50_000
# Columns the service adds to the entity dataframe of a historical query.
ROW_INDEX = "__flywheel_row"
EVENT_TIMESTAMP = "event_timestamp"

FEAST_SECONDS = Histogram("flywheel_featurestore_feast_seconds", "Time spent in one Feast call.", ["operation"])
ROWS = Counter("flywheel_featurestore_rows_total", "Entity rows served or written.", ["operation"])

# pandas dtypes that keep nulls and the Feast type through Arrow when Feast ingests a pushed dataframe.
PANDAS_DTYPES = {ValueType.DOUBLE: "Float64", ValueType.FLOAT: "Float32", ValueType.INT64: "Int64",
                 ValueType.INT32: "Int32", ValueType.BOOL: "boolean", ValueType.STRING: "object",
                 ValueType.UNIX_TIMESTAMP: "datetime64[ns, UTC]"}


@dataclass
class TypedRow:
    """One row for a push source, checked and typed: join keys, features, and when it became true."""

    keys: dict[str, Any]
    values: dict[str, Any]
    event_time: datetime


class Features:
    """Online and historical features, pushes and materialization over one Feast repo in PostgreSQL."""

    def __init__(self, db: Database, config: RepoConfig, repo_path: Path | None, *, online_threads: int = 4) -> None:
        self.db = db
        self.config = config
        self.repo_path = repo_path
        self.store = FeatureStore(config=config)
        self._catalog: Catalog | None = None
        self._online = ThreadPoolExecutor(online_threads, thread_name_prefix="feast-online")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="feast-write")
        self._offline = ThreadPoolExecutor(2, thread_name_prefix="feast-offline")

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("the feature store has not started")
        return self._catalog

    # -- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the repo, create its source tables, apply it (an idempotent `feast apply`), read the catalog.

        Without a repo nothing is applied (not even deletions: an unset setting must not wipe the project's
        feature views); the catalog is what the Feast registry holds.
        """
        if self.repo_path is None:
            log.warning("no Feast repo configured (FLYWHEEL_FEATURESTORE_REPO): serving the feature views "
                        "applied before, if any", extra={"project": self.config.project})
        else:
            await self._apply_repo(self.repo_path)
        self._catalog = await self._call(self._writer, Catalog.from_store, self.store, self.db.schema)
        # Build the provider and the online store's pool now, not on the first request.
        await self._call(self._writer, self.store._get_provider)

    async def _apply_repo(self, repo_path: Path) -> None:
        started = time.perf_counter()
        objects = await self._call(self._writer, load_repo, repo_path)
        tables = source_tables([*objects.feature_views, *objects.stream_feature_views], objects.entities,
                               self.db.schema)
        # Replicas starting together create tables and apply one at a time.
        async with apply_lock(self.db):
            async with self.db.connection() as conn:
                await ensure_tables(conn, tables)
            changes = await self._call(self._writer, self._apply, objects)
            async with self.db.connection() as conn:
                await record_apply(conn, str(repo_path), self.config.project, *changes)
        log.info("feast repo applied", extra={
            "repo": str(repo_path), "project": self.config.project, **objects.summary(),
            "added": changes[0], "deleted": changes[1], "tables": [t.qualified for t in tables],
            "seconds": round(time.perf_counter() - started, 3)})

    def _apply(self, objects: RepoObjects) -> tuple[list[str], list[str]]:
        """`feast apply` of the repo: apply every object (Feast's apply is idempotent) and delete what the
        registry has and the repo no longer does; returns the names added and deleted."""
        _, to_delete, to_update, to_add = extract_objects_for_keep_delete_update_add(
            self.store.registry, self.config.project, objects.contents(self.config.project))
        self.store.apply([o for kind in FEAST_OBJECT_TYPES for o in (*to_add[kind], *to_update[kind])],
                         objects_to_delete=[o for kind in FEAST_OBJECT_TYPES for o in to_delete[kind]],
                         partial=False)
        return (sorted(f"{type(o).__name__}:{o.name}" for kind in FEAST_OBJECT_TYPES for o in to_add[kind]),
                sorted(f"{type(o).__name__}:{o.name}" for kind in FEAST_OBJECT_TYPES for o in to_delete[kind]))

    async def close(self) -> None:
        for pool in (self._online, self._offline, self._writer):
            pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            online = self.store._get_provider().online_store
            if getattr(online, "_conn_pool", None) is not None:
                online._conn_pool.close()
            if getattr(online, "_conn", None) is not None:
                online._conn.close()
        with contextlib.suppress(Exception):
            self.store.registry.write_engine.dispose()

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on `pool`, with this task's context (trace) carried over."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(context.run, fn, *args, **kwargs))

    # -- online ----------------------------------------------------------------------------------------

    async def online(self, selection: Selection, rows: Sequence[Mapping[str, FeatureValue]]
                     ) -> pb.GetOnlineFeaturesResponse:
        """Latest values of the selected features for each entity row, in row order."""
        resolved = self.catalog.resolve(selection)
        if len(rows) > MAX_ONLINE_ROWS:
            raise InvalidArgument(f"entity_rows has {len(rows)} rows; at most {MAX_ONLINE_ROWS} per call")
        columns = self._key_columns(resolved, rows)
        response = await self._call(self._online, self._feast_online, resolved.feast_features, columns)
        ROWS.labels("online").inc(len(rows))
        return online_response(resolved, response.proto, len(rows))

    def _feast_online(self, features: Any, columns: dict[str, list[Any]]) -> Any:
        with FEAST_SECONDS.labels("online").time(), self._online_store_errors():
            try:
                return self.store.get_online_features(features=features, entity_rows=columns,
                                                      full_feature_names=True)
            except FeastObjectNotFoundException as exc:
                raise NotFound(str(exc)) from exc

    @contextlib.contextmanager
    def _online_store_errors(self) -> Iterator[None]:
        """Database errors of the online store -> Unavailable, after replacing its connection pool.

        Feast's PostgreSQL online store neither returns a connection to its pool when a query fails nor
        reconnects: after a database restart every later call would fail. A fresh pool recovers.
        """
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            online = self.store._get_provider().online_store
            pool, online._conn_pool = getattr(online, "_conn_pool", None), None
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.close(timeout=0)
            log.warning("online store error; connection pool replaced", extra={"error": repr(exc)})
            raise Unavailable(f"the online store is unreachable: {exc}") from exc

    def _key_columns(self, resolved: ResolvedSelection, rows: Sequence[Mapping[str, FeatureValue]],
                     where: str = "entity_rows") -> dict[str, list[Any]]:
        """The rows' join keys as typed columns; InvalidArgument names the row and key at fault."""
        if not rows:
            raise InvalidArgument(f"{where} must not be empty")
        columns: dict[str, list[Any]] = {key: [] for key in resolved.keys}
        for i, keys in enumerate(rows):
            for key in keys:
                if key not in resolved.keys:
                    raise InvalidArgument(f"{where}[{i}].keys[{key!r}] is not a join key of the selected features "
                                          f"(they need: {', '.join(resolved.keys)})")
            for key, value_type in resolved.keys.items():
                if key not in keys:
                    raise InvalidArgument(f"{where}[{i}].keys has no {key!r} (join key of feature view "
                                          f"{resolved.key_owner[key]!r})")
                columns[key].append(convert.python_value(keys[key], value_type, f"{where}[{i}].keys[{key!r}]",
                                                         nullable=False))
        return columns

    # -- historical ------------------------------------------------------------------------------------

    async def historical(self, selection: Selection, rows: Sequence[pb.EntityRow], page_size: int = 0
                         ) -> AsyncIterator[pb.GetHistoricalFeaturesResponse]:
        """Point-in-time correct values for entity rows with event times, in pages, in request order.

        Each row gets, per feature view, the values of the latest offline row of its entity whose event
        timestamp is at or before the row's event_time and no older than the view's ttl (Feast's
        point-in-time join); no such row -> null with status NOT_FOUND.
        """
        resolved = self.catalog.resolve(selection)
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {page_size}")
        page_size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        columns = self._key_columns(resolved, [row.keys for row in rows])
        for i, row in enumerate(rows):
            if not row.HasField("event_time"):
                raise InvalidArgument(f"entity_rows[{i}].event_time is required for historical retrieval")
        times = [convert.to_datetime(row.event_time) for row in rows]
        chunk = page_size * max(1, HISTORICAL_CHUNK // page_size)
        first = True
        for start in range(0, len(rows), chunk):
            end = min(start + chunk, len(rows))
            frame = pd.DataFrame({
                **{key: _series(values[start:end], resolved.keys[key]) for key, values in columns.items()},
                EVENT_TIMESTAMP: pd.to_datetime(times[start:end], utc=True),
                ROW_INDEX: range(start, end),
            })
            values = await self._call(self._offline, self._feast_historical, resolved, frame)
            ROWS.labels("historical").inc(end - start)
            for page_start in range(start, end, page_size):
                page_end = min(page_start + page_size, end)
                page = pb.GetHistoricalFeaturesResponse(entity_rows=rows[page_start:page_end])
                if first:
                    page.feature_names.extend(resolved.names)
                    first = False
                for i in range(page_start - start, page_end - start):
                    row_values = [convert.from_python(column[i]) for column in values]
                    page.rows.add(values=row_values, statuses=[
                        pb.FEATURE_STATUS_NOT_FOUND if v.WhichOneof("value") is None else pb.FEATURE_STATUS_PRESENT
                        for v in row_values])
                yield page

    def _feast_historical(self, resolved: ResolvedSelection, frame: pd.DataFrame) -> list[list[Any]]:
        """Feast's point-in-time join for one chunk; columns of values, in the frame's row order."""
        with FEAST_SECONDS.labels("historical").time():
            try:
                job = self.store.get_historical_features(entity_df=frame, features=resolved.feast_features,
                                                         full_feature_names=True)
                table = job.to_arrow()
            except FeastObjectNotFoundException as exc:
                raise NotFound(str(exc)) from exc
        # Feast may return the rows in another order (its query sorts by time): put them back.
        first_row = int(frame[ROW_INDEX].iloc[0])
        order = table.column(ROW_INDEX).to_pylist()
        if sorted(order) != list(range(first_row, first_row + len(frame))):
            raise RuntimeError(f"Feast returned {len(order)} rows for {len(frame)} entity rows")
        position = [0] * len(order)
        for k, row in enumerate(order):
            position[row - first_row] = k
        result = []
        for name in resolved.names:
            column = table.column(name).to_pylist()
            result.append([column[k] for k in position])
        return result

    # -- pushes ----------------------------------------------------------------------------------------

    async def push(self, push_source: str, rows: Sequence[pb.PushRow]) -> int:
        """Write rows to a push source: its offline tables and the online store, in one transaction."""
        target = self.catalog.push_target(push_source)
        if not rows:
            raise InvalidArgument("rows must not be empty")
        typed: list[TypedRow] = []
        for i, row in enumerate(rows):
            if not row.HasField("event_time"):
                raise InvalidArgument(f"rows[{i}].event_time is required")
            typed.append(typed_row(
                target, row.entity_keys, row.values, convert.to_datetime(row.event_time), f"rows[{i}]",
                key=lambda value, value_type, where: convert.python_value(value, value_type, where, nullable=False),
                keys_field="entity_keys"))
        async with self.db.connection() as conn, conn.transaction():
            await self.write(conn, target, typed)
        ROWS.labels("push").inc(len(typed))
        return len(typed)

    async def apply_updates(self, conn: AsyncConnection, updates: Sequence[tuple[str, FeaturesUpdated, datetime]]
                            ) -> None:
        """Apply features.updates events (event id, payload, fallback time) in the consumer's transaction.

        An event that can never be applied (unknown push source, bad key or value) raises PoisonEvent.
        """
        groups: dict[str, list[TypedRow]] = {}
        for event_id, update, fallback_time in updates:
            where = f"event {event_id}"
            try:
                target = self.catalog.push_target(update.push_source)
                when = convert.to_datetime(update.event_time) if update.HasField("event_time") else fallback_time
                row = typed_row(target, update.entity_keys, update.values, when, where, key=convert.key_from_text,
                                keys_field="entity_keys")
            except (NotFound, InvalidArgument) as exc:
                raise PoisonEvent(f"{where}: {exc}") from exc
            groups.setdefault(target.name, []).append(row)
        for name, rows in groups.items():
            await self.write(conn, self.catalog.push_target(name), rows)
            ROWS.labels("event").inc(len(rows))

    async def write(self, conn: AsyncConnection, target: PushTarget, rows: Sequence[TypedRow]) -> None:
        """Append the rows to the push source's offline tables (in `conn`'s transaction), then upsert the
        latest row per entity into the online store (an upsert: repeating it after a rollback is harmless)."""
        created = created_times(datetime.now(UTC), len(rows))
        for table in target.tables:
            features = [f for f in table.feature_columns if f in target.features]
            columns = [*table.join_keys, *(table.feature_columns[f] for f in features), table.timestamp_field]
            if table.created_column:
                columns.append(table.created_column)
            await append_rows(conn, table, columns, (
                [*(row.keys[k] for k in table.join_keys), *(row.values[f] for f in features), row.event_time,
                 *([created[i]] if table.created_column else [])]
                for i, row in enumerate(rows)))
        frame = online_frame(target, latest_per_entity(target, rows), created)
        await self._call(self._writer, self._feast_push, target.name, frame)

    def _feast_push(self, push_source: str, frame: pd.DataFrame) -> None:
        with FEAST_SECONDS.labels("push").time(), self._online_store_errors():
            self.store.push(push_source, frame, to=PushMode.ONLINE)

    # -- materialization and listing ------------------------------------------------------------------------

    async def materialize(self, start: datetime | None, end: datetime | None, views: Sequence[str]) -> list[str]:
        """Copy the latest offline values in [start, end] into the online store; returns the views done."""
        if start is None:
            raise InvalidArgument("start_time is required")
        end = end or datetime.now(UTC)
        if start >= end:
            raise InvalidArgument(f"start_time {start.isoformat()} must be before end_time {end.isoformat()}")
        names = list(dict.fromkeys(views))
        for i, name in enumerate(names):
            view = self.catalog.view(name)
            if view.kind == "on_demand_feature_view" or not view.online:
                raise InvalidArgument(f"feature_views[{i}] {name!r} is not an online feature view")
        if not names:
            names = [v.name for v in self.catalog.views.values() if v.online and v.kind != "on_demand_feature_view"]
        if names:
            await self._call(self._writer, self._feast_materialize, start, end, names)
        return names

    def _feast_materialize(self, start: datetime, end: datetime, names: list[str]) -> None:
        # Feast prints progress (text and tqdm bars) for a terminal; a service logs instead.
        out = io.StringIO()
        with FEAST_SECONDS.labels("materialize").time(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            self.store.materialize(start_date=start, end_date=end, feature_views=names)
        log.info("materialized", extra={"feature_views": names, "start": start.isoformat(), "end": end.isoformat()})

    def list_views(self) -> pb.ListFeatureViewsResponse:
        response = pb.ListFeatureViewsResponse()
        for view in sorted(self.catalog.views.values(), key=lambda v: v.name):
            message = response.feature_views.add(
                name=view.name, entities=list(view.join_keys), online=view.online, push_source=view.push_source,
                description=view.description)
            message.features.extend(pb.FeatureField(name=n, dtype=t) for n, t in view.dtypes.items())
            if view.ttl:
                message.ttl.FromTimedelta(view.ttl)
        for name in sorted(self.catalog.services):
            response.feature_services.add(name=name, features=self.catalog.service_refs(self.catalog.services[name]))
        return response


# -- helpers (pure) -----------------------------------------------------------------------------------------


def typed_row(target: PushTarget, keys: Mapping[str, Any], values: Mapping[str, FeatureValue], when: datetime,
              where: str, *, key: Callable[[Any, ValueType, str], Any], keys_field: str) -> TypedRow:
    """A pushed row checked against its push source: every join key and every feature, each of its type."""
    for name in keys:
        if name not in target.join_keys:
            raise InvalidArgument(f"{where}.{keys_field}[{name!r}] is not a join key of push source "
                                  f"{target.name!r} (join keys: {', '.join(target.join_keys)})")
    for name in values:
        if name not in target.features:
            raise InvalidArgument(f"{where}.values[{name!r}] is not a feature of push source {target.name!r} "
                                  f"(features: {', '.join(target.features)})")
    typed_keys = {}
    for name, value_type in target.join_keys.items():
        if name not in keys:
            raise InvalidArgument(f"{where}.{keys_field} has no {name!r} (join key of push source {target.name!r})")
        typed_keys[name] = key(keys[name], value_type, f"{where}.{keys_field}[{name!r}]")
    typed_values = {}
    for name, value_type in target.features.items():
        if name not in values:
            raise InvalidArgument(f"{where}.values has no {name!r}: a row carries every feature of its push "
                                  "source (a FeatureValue with no variant set is null)")
        typed_values[name] = convert.python_value(values[name], value_type, f"{where}.values[{name!r}]")
    return TypedRow(typed_keys, typed_values, when)


def latest_per_entity(target: PushTarget, rows: Sequence[TypedRow]) -> list[tuple[int, TypedRow]]:
    """(index, row) of the latest row of each entity (by event time; the later row on a tie): the online
    store keeps one value per entity, and the last write wins."""
    latest: dict[tuple[Any, ...], tuple[int, TypedRow]] = {}
    for i, row in enumerate(rows):
        entity = tuple(row.keys[k] for k in target.join_keys)
        seen = latest.get(entity)
        if seen is None or row.event_time >= seen[1].event_time:
            latest[entity] = (i, row)
    return sorted(latest.values(), key=lambda item: item[0])


def online_frame(target: PushTarget, rows: Sequence[tuple[int, TypedRow]], created: Sequence[datetime]
                 ) -> pd.DataFrame:
    """The dataframe Feast's push takes: join keys, feature columns (as the sources name them) and timestamps."""
    data: dict[str, Any] = {}
    for key, value_type in target.join_keys.items():
        data[key] = _series([row.keys[key] for _, row in rows], value_type)
    for table in target.tables:
        for feature, column in table.feature_columns.items():
            if feature in target.features and column not in data:
                data[column] = _series([row.values[feature] for _, row in rows], target.features[feature])
        data[table.timestamp_field] = pd.to_datetime([row.event_time for _, row in rows], utc=True)
        if table.created_column:
            data[table.created_column] = pd.to_datetime([created[i] for i, _ in rows], utc=True)
    return pd.DataFrame(data)


def online_response(resolved: ResolvedSelection, proto: Any, count: int) -> pb.GetOnlineFeaturesResponse:
    """Feast's column-wise online response as Flywheel's row-wise one, in the requested feature order.

    A value older than its view's ttl is still returned, with status OUTSIDE_MAX_AGE.
    """
    index = {name: j for j, name in enumerate(proto.metadata.feature_names.val)}
    now = time.time()
    values, statuses = [], []
    for name, ttl in zip(resolved.names, resolved.ttls, strict=True):
        if name not in index:
            raise RuntimeError(f"Feast returned no column {name!r} (it returned {list(index)})")
        vector = proto.results[index[name]]
        values.append(convert.feast_column(vector.values))
        column = [convert.status(s) for s in vector.statuses]
        if ttl and len(vector.event_timestamps) == len(column):
            # Feast's online read does not apply the view's ttl: mark values older than it.
            oldest = now - ttl.total_seconds()
            column = [pb.FEATURE_STATUS_OUTSIDE_MAX_AGE if status == pb.FEATURE_STATUS_PRESENT and ts.seconds
                      and ts.seconds < oldest else status for status, ts in zip(column, vector.event_timestamps,
                                                                                   strict=True)]
        statuses.append(column)
    response = pb.GetOnlineFeaturesResponse(feature_names=resolved.names)
    for i in range(count):
        row = response.rows.add()
        row_values = row.values
        for column in values:
            value = row_values.add()
            item = column[i]
            if item is not None:
                setattr(value, item[0], item[1])
        row.statuses.extend([column[i] for column in statuses])
    return response


def _series(values: Sequence[Any], value_type: ValueType) -> pd.Series:
    return pd.Series(values, dtype=PANDAS_DTYPES.get(value_type, "object"))
