"""What the applied repo offers, read back from Feast's registry: feature views with their join keys and
feature types, feature services, and push sources with the views and tables they feed.

The request checks live here, before anything reaches Feast: an unknown feature service, view, feature or
push source is NOT_FOUND, a malformed reference INVALID_ARGUMENT, each naming what is at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from feast import FeatureService, FeatureStore
from feast.data_source import PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.value_type import ValueType

from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.featurestore.store import SourceTable, SourceTableError, source_tables, table_of, view_join_keys


@dataclass
class ViewInfo:
    """A feature view as clients see it."""

    name: str
    kind: str  # feature_view, stream_feature_view or on_demand_feature_view
    join_keys: dict[str, ValueType]
    features: dict[str, ValueType]
    dtypes: dict[str, str]  # feature -> Feast type name (Float64, Int64, ...)
    ttl: timedelta | None = None
    online: bool = True
    push_source: str = ""
    description: str = ""
    # On-demand views: request-time inputs the entity rows carry besides the join keys.
    request_fields: dict[str, ValueType] = field(default_factory=dict)


@dataclass
class PushTarget:
    """A push source: the views it feeds, what a pushed row carries, and the tables rows are appended to."""

    name: str
    views: list[ViewInfo]
    join_keys: dict[str, ValueType]
    features: dict[str, ValueType]
    tables: list[SourceTable]


@dataclass(frozen=True)
class Selection:
    """Which features a request reads: a feature service by name, or "view:feature" references."""

    feature_service: str = ""
    refs: tuple[str, ...] = ()


@dataclass
class ResolvedSelection:
    """A selection checked against the registry, ready for Feast."""

    feast_features: FeatureService | list[str]
    # Output columns, "view__feature" (the projection's name for a service), in request order.
    names: list[str]
    types: list[ValueType]
    # Each column's feature view ttl (None or 0: no limit), for OUTSIDE_MAX_AGE online.
    ttls: list[timedelta | None]
    # What every entity row must carry: join keys (and request fields of on-demand views), with types.
    keys: dict[str, ValueType]
    # For messages: which view needs each key.
    key_owner: dict[str, str]


class Catalog:
    """The registry's feature views, services and push sources, indexed for request checks."""

    def __init__(self, views: Sequence[ViewInfo], services: dict[str, FeatureService],
                 push_targets: dict[str, PushTarget]) -> None:
        self.views = {v.name: v for v in views}
        self.services = services
        self.push_targets = push_targets

    @classmethod
    def from_store(cls, store: FeatureStore, schema: str) -> Catalog:
        """Read the catalog from Feast's registry (blocking: call it off the event loop)."""
        regular = [*store.list_feature_views(allow_cache=True), *store.list_stream_feature_views(allow_cache=True)]
        entities = store.list_entities(allow_cache=True)
        views: list[ViewInfo] = []
        for fv in regular:
            push = fv.stream_source.name if isinstance(fv.stream_source, PushSource) else ""
            views.append(ViewInfo(
                name=fv.name, kind="stream_feature_view" if fv.__class__.__name__ == "StreamFeatureView"
                else "feature_view",
                join_keys=view_join_keys(fv, entities),
                features={f.name: f.dtype.to_value_type() for f in fv.features},
                dtypes={f.name: str(f.dtype) for f in fv.features},
                ttl=fv.ttl, online=fv.online, push_source=push, description=fv.description))
        by_name = {v.name: v for v in views}
        for odfv in store.list_on_demand_feature_views(allow_cache=True):
            keys: dict[str, ValueType] = {}
            for projection in odfv.source_feature_view_projections.values():
                source = by_name.get(projection.name)
                if source is not None:
                    keys.update({projection.join_key_map.get(k, k): t for k, t in source.join_keys.items()})
            request = {f.name: f.dtype.to_value_type()
                       for rs in odfv.source_request_sources.values() for f in rs.schema}
            views.append(ViewInfo(
                name=odfv.name, kind="on_demand_feature_view", join_keys=keys,
                features={f.name: f.dtype.to_value_type() for f in odfv.features},
                dtypes={f.name: str(f.dtype) for f in odfv.features}, online=True,
                description=odfv.description, request_fields=request))
        services = {s.name: s for s in store.registry.list_feature_services(store.project, allow_cache=True)}
        tables = {t.qualified: t for t in source_tables(regular, entities, schema)}
        targets: dict[str, PushTarget] = {}
        for fv, info in zip(regular, views, strict=False):
            if not info.push_source:
                continue
            target = targets.setdefault(info.push_source, PushTarget(info.push_source, [], {}, {}, []))
            target.views.append(info)
            target.join_keys.update(info.join_keys)
            target.features.update(info.features)
            table = next((t for t in tables.values() if _reads(fv.batch_source, t, schema)), None)
            if table is None:
                raise SourceTableError(f"push source {info.push_source!r} feeds feature view {fv.name!r}, whose "
                                       "batch source is not a PostgreSQL table: pushed rows could not be kept "
                                       "offline (use PostgreSQLSource(table=...))")
            if table not in target.tables:
                target.tables.append(table)
        return cls(views, services, targets)

    # -- lookups -------------------------------------------------------------------------------------

    def view(self, name: str) -> ViewInfo:
        try:
            return self.views[name]
        except KeyError:
            raise NotFound(f"feature view {name!r} not found; known: {_known(self.views)}") from None

    def push_target(self, name: str) -> PushTarget:
        if not name:
            raise InvalidArgument("push_source is required")
        try:
            return self.push_targets[name]
        except KeyError:
            raise NotFound(f"push source {name!r} not found; known: {_known(self.push_targets)}") from None

    def resolve(self, selection: Selection) -> ResolvedSelection:
        """Check a selection against the registry; NotFound / InvalidArgument name what is wrong."""
        if selection.feature_service:
            return self._resolve_service(selection.feature_service)
        if not selection.refs:
            raise InvalidArgument("features: set feature_service or at least one ref in features.refs")
        names: list[str] = []
        types: list[ValueType] = []
        ttls: list[timedelta | None] = []
        keys: dict[str, ValueType] = {}
        owner: dict[str, str] = {}
        seen: set[str] = set()
        for i, ref in enumerate(selection.refs):
            view_name, sep, feature = ref.partition(":")
            if not sep or not view_name or not feature or ":" in feature:
                raise InvalidArgument(f"features.refs[{i}] {ref!r} is not a \"feature_view:feature\" reference")
            if ref in seen:
                raise InvalidArgument(f"features.refs[{i}] {ref!r} is listed twice")
            seen.add(ref)
            if view_name not in self.views:
                raise NotFound(f"feature view {view_name!r} (in features.refs[{i}] {ref!r}) not found; "
                               f"known: {_known(self.views)}")
            view = self.views[view_name]
            if feature not in view.features:
                raise NotFound(f"feature {feature!r} (in features.refs[{i}] {ref!r}) not found in feature view "
                               f"{view_name!r}; it has: {_known(view.features)}")
            names.append(f"{view_name}__{feature}")
            types.append(view.features[feature])
            ttls.append(view.ttl)
            _add_keys(keys, owner, view, {})
        return ResolvedSelection(list(selection.refs), names, types, ttls, keys, owner)

    def _resolve_service(self, name: str) -> ResolvedSelection:
        service = self.services.get(name)
        if service is None:
            raise NotFound(f"feature service {name!r} not found; known: {_known(self.services)}")
        names: list[str] = []
        types: list[ValueType] = []
        ttls: list[timedelta | None] = []
        keys: dict[str, ValueType] = {}
        owner: dict[str, str] = {}
        for projection in service.feature_view_projections:
            view = self.view(projection.name)
            for feature in projection.features:
                names.append(f"{projection.name_to_use()}__{feature.name}")
                types.append(feature.dtype.to_value_type())
                ttls.append(view.ttl)
            _add_keys(keys, owner, view, projection.join_key_map)
        return ResolvedSelection(service, names, types, ttls, keys, owner)

    def service_refs(self, service: FeatureService) -> list[str]:
        return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def _add_keys(keys: dict[str, ValueType], owner: dict[str, str], view: ViewInfo, key_map: dict[str, str]) -> None:
    for key, value_type in [*view.join_keys.items(), *view.request_fields.items()]:
        name = key_map.get(key, key)
        keys.setdefault(name, value_type)
        owner.setdefault(name, view.name)


def _reads(source: Any, table: SourceTable, schema: str) -> bool:
    return isinstance(source, PostgreSQLSource) and table_of(source, schema) == (table.schema, table.name)


def _known(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if listed else "(none)"
