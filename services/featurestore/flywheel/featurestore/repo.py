"""The user's Feast repo: its objects, read from Python files, and the Feast configuration that puts its
registry, offline store and online store in the service's PostgreSQL schema.

A repo is what `feast apply` reads: a directory of Python files defining Feast objects (or one such file).
It is imported the way Feast's CLI imports it, so definitions written for `feast apply` work unchanged:

- a directory without `__init__.py` is put on `sys.path` and each file imported by its path relative to it
  (`features.py` -> `features`, `views/customer.py` -> `views.customer`), so sibling imports work;
- a package (a directory with `__init__.py`, e.g. `payments_demo/feature_repo`) is imported by its dotted
  name, so its objects are the very objects the rest of the package imports.

`.feastignore` is honoured. Project objects in the repo are ignored: the project is a setting.
"""

from __future__ import annotations

import getpass
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView, RepoConfig
from feast.batch_feature_view import BatchFeatureView
from feast.data_source import DataSource, KafkaSource, KinesisSource, PushSource
from feast.feature_view import DUMMY_ENTITY
from feast.project import Project
from feast.repo_contents import RepoContents
from feast.repo_operations import get_ignore_files, read_feastignore
from feast.stream_feature_view import StreamFeatureView
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

ENTITY_KEY_SERIALIZATION_VERSION = 3  # what Feast 0.67 writes by default (v2 and older are deprecated)


@dataclass
class RepoObjects:
    """The Feast objects defined in a repo, each once (an object imported by several files counts once)."""

    path: Path
    data_sources: list[DataSource] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    feature_views: list[FeatureView] = field(default_factory=list)
    stream_feature_views: list[StreamFeatureView] = field(default_factory=list)
    on_demand_feature_views: list[OnDemandFeatureView] = field(default_factory=list)
    feature_services: list[FeatureService] = field(default_factory=list)

    def add(self, obj: Any) -> None:
        if isinstance(obj, DataSource):
            self._add_source(obj)
        elif isinstance(obj, StreamFeatureView):
            if _new(obj, self.stream_feature_views):
                self.stream_feature_views.append(obj)
                self._add_view_sources(obj)
        elif isinstance(obj, (FeatureView, BatchFeatureView)):
            if _new(obj, self.feature_views):
                self.feature_views.append(obj)
                self._add_view_sources(obj)
        elif isinstance(obj, OnDemandFeatureView):
            if _new(obj, self.on_demand_feature_views):
                self.on_demand_feature_views.append(obj)
        elif isinstance(obj, Entity):
            if _new(obj, self.entities):
                self.entities.append(obj)
        elif isinstance(obj, FeatureService) and _new(obj, self.feature_services):
            self.feature_services.append(obj)

    def _add_source(self, source: DataSource | None) -> None:
        if source is None or not _new(source, self.data_sources):
            return
        self.data_sources.append(source)
        if isinstance(source, (PushSource, KafkaSource, KinesisSource)):
            self._add_source(source.batch_source)

    def _add_view_sources(self, view: FeatureView) -> None:
        self._add_source(view.batch_source)
        self._add_source(view.stream_source)

    def contents(self, project: str) -> RepoContents:
        """As Feast's `RepoContents` (what `feast apply` diffs against the registry), in `project`."""
        return RepoContents(
            projects=[Project(name=project)], data_sources=list(self.data_sources),
            feature_views=list(self.feature_views),
            on_demand_feature_views=list(self.on_demand_feature_views),
            stream_feature_views=list(self.stream_feature_views), label_views=[],
            entities=[*self.entities, DUMMY_ENTITY], feature_services=list(self.feature_services), permissions=[],
        )

    def summary(self) -> dict[str, int]:
        return {"entities": len(self.entities), "feature_views": len(self.feature_views) + len(
            self.stream_feature_views), "on_demand_feature_views": len(self.on_demand_feature_views),
                "feature_services": len(self.feature_services), "data_sources": len(self.data_sources)}


def _new(obj: Any, seen: list[Any]) -> bool:
    return not any(obj is other for other in seen)


def load_repo(path: Path) -> RepoObjects:
    """Import the repo at `path` (a directory or a .py file) and collect its Feast objects."""
    path = path.resolve()
    if not path.exists():
        raise FileNotFoundError(f"Feast repo {path} does not exist")
    objects = RepoObjects(path)
    for module in _import_repo(path):
        for name in dir(module):
            objects.add(getattr(module, name))
    if not objects.feature_views and not objects.stream_feature_views and not objects.on_demand_feature_views:
        raise ValueError(f"Feast repo {path} defines no feature view")
    return objects


def repo_files(root: Path) -> list[Path]:
    """The repo's Python files (not `__init__.py`), minus `.feastignore`d ones and hidden or cache folders.

    Paths stay as found (not resolved), so a directory of symlinks, such as a Kubernetes ConfigMap volume
    (`features.py -> ..data/features.py`), yields `features.py`.
    """
    ignored = get_ignore_files(root, [*read_feastignore(root), "**/__pycache__", "**/.ipynb_checkpoints"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if path.name == "__init__.py" or any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        if path.resolve() not in ignored:
            files.append(path)
    return files


def _import_repo(path: Path) -> list[ModuleType]:
    if path.is_file():
        files, root = [path], path.parent
    else:
        files, root = repo_files(path), path
    package = _package_name(root)
    modules: list[ModuleType] = []
    if package is None:
        # A plain directory, as `feast apply` sees it: its files are top-level modules.
        _on_sys_path(root)
        prefix = ""
    else:
        modules.append(importlib.import_module(package))
        prefix = package + "."
    for file in files:
        relative = file.relative_to(root).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"]
        if not parts:
            continue
        module = importlib.import_module(prefix + ".".join(parts))
        if Path(module.__file__ or "").resolve() != file.resolve():
            raise ImportError(f"Feast repo file {file} imports as module {module.__name__!r}, which is already "
                              f"loaded from {module.__file__}: rename the file, or make the repo a package")
        modules.append(module)
    return modules


def _package_name(directory: Path) -> str | None:
    """The dotted name of `directory` when it is a package (putting its root's parent on sys.path if needed)."""
    if not (directory / "__init__.py").is_file():
        return None
    top = directory
    while (top.parent / "__init__.py").is_file():
        top = top.parent
    _on_sys_path(top.parent)
    return ".".join(directory.relative_to(top.parent).parts)


def _on_sys_path(directory: Path) -> None:
    resolved = {str(Path(p or ".").resolve()) for p in sys.path}
    if str(directory) not in resolved:
        sys.path.insert(0, str(directory))


# -- Feast configuration ------------------------------------------------------------------------------


def postgres_options(database_url: str, schema: str) -> dict[str, Any]:
    """The PostgreSQL settings Feast's postgres offline and online stores take, from a libpq URL or DSN."""
    params = conninfo_to_dict(database_url)
    return {
        "host": params.get("host") or "localhost",
        "port": int(params.get("port") or 5432),
        "database": params.get("dbname") or params.get("user") or getpass.getuser(),
        "db_schema": schema,
        "user": params.get("user") or getpass.getuser(),
        "password": params.get("password") or "",
        # Feast defaults to sslmode=require; a URL that says nothing about TLS means libpq's plain default.
        "sslmode": params.get("sslmode") or "disable",
        "sslkey_path": params.get("sslkey"),
        "sslcert_path": params.get("sslcert"),
        "sslrootcert_path": params.get("sslrootcert"),
    }


def registry_url(database_url: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) of the database, for Feast's SQL registry."""
    params = conninfo_to_dict(database_url)
    host = params.get("host") or "localhost"
    query = {k: v for k, v in params.items()
             if k in ("sslmode", "sslkey", "sslcert", "sslrootcert", "connect_timeout", "application_name")}
    if host.startswith("/"):  # a Unix socket directory goes in the query string
        query["host"] = host
        host = None
    url = URL.create("postgresql+psycopg", username=params.get("user") or getpass.getuser(),
                     password=params.get("password") or None, host=host,
                     port=int(params["port"]) if params.get("port") else None,
                     database=params.get("dbname") or params.get("user") or getpass.getuser(), query=query)
    return url.render_as_string(hide_password=False)


def feast_config(database_url: str, schema: str, project: str, *, cache_ttl_seconds: int = 0,
                 online_pool_size: int = 8) -> RepoConfig:
    """A Feast RepoConfig with the SQL registry, the offline store and the online store in `schema`."""
    pg = postgres_options(database_url, schema)
    return RepoConfig(
        project=project,
        provider="local",
        registry={
            "registry_type": "sql",
            "path": registry_url(database_url),
            # The registry's tables go in the service's schema: every connection searches it first.
            "sqlalchemy_config_kwargs": {"connect_args": {"options": f"-csearch_path={schema}"},
                                         "pool_pre_ping": True},
            "cache_ttl_seconds": cache_ttl_seconds,
            # Materializing must not make serving fail (Feast gates views in state MATERIALIZING otherwise).
            "serve_features_while_materializing": True,
        },
        offline_store={"type": "postgres", **pg},
        # A pool: online reads run on several threads at once (the default is one shared connection).
        online_store={"type": "postgres", **pg, "conn_type": "pool", "min_conn": 1, "max_conn": online_pool_size},
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
    )
