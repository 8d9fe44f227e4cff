"""The feature store's repo handling, without a broker or database: loading Feast repos the way `feast apply`
does (plain directories, packages, Kubernetes ConfigMap volumes), the Feast configuration built from
FLYWHEEL_DATABASE_URL, the offline tables derived from the views, and the start-up messages."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.repo import feast_config, load_repo, postgres_options, registry_url, repo_files
from flywheel.featurestore.store import source_tables

FIXTURE_REPO = Path(__file__).resolve().parents[1] / "fixtures" / "feast_repo"

ENTITIES = """
from feast import Entity, ValueType
account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
"""
VIEWS = """
from datetime import timedelta
from feast import FeatureView, Field, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float32, Int32
from {entities} import account

table = PostgreSQLSource(name="acct", table="Reporting.Account_Stats", timestamp_field="ts",
                         field_mapping={{"bal": "balance"}})
push = PushSource(name="acct_push", batch_source=table)
stats = FeatureView(name="account_stats", entities=[account], ttl=timedelta(days=1), source=push,
                    schema=[Field(name="balance", dtype=Float32), Field(name="logins", dtype=Int32)])
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def test_a_plain_directory_loads_like_feast_apply(tmp_path: Path) -> None:
    entities = f"entities_{uuid.uuid4().hex[:8]}"  # top-level module names are process-wide
    repo = write(tmp_path / "repo", {f"{entities}.py": ENTITIES, "views/account.py": VIEWS.format(entities=entities),
                                     ".feastignore": "ignored/\n", "ignored/broken.py": "raise RuntimeError('x')",
                                     ".hidden/broken.py": "raise RuntimeError('x')"})
    write(repo / "views", {"__init__.py": ""})
    objects = load_repo(repo)
    assert [v.name for v in objects.feature_views] == ["account_stats"]
    assert [e.name for e in objects.entities] == ["account"]  # imported by two files, counted once
    assert {s.name for s in objects.data_sources} == {"acct", "acct_push"}

    [table] = source_tables(objects.feature_views, objects.entities, "featurestore")
    # Feast puts the unquoted name in its SQL, so PostgreSQL folds it to lower case.
    assert (table.schema, table.name) == ("reporting", "account_stats")
    assert table.columns == {"account_id": "bigint", "bal": "real", "logins": "integer", "ts": "timestamptz"}
    assert table.feature_columns == {"balance": "bal", "logins": "logins"}
    assert table.join_keys == ["account_id"] and table.created_column == ""


def test_the_fixture_repo_and_a_package_repo(tmp_path: Path) -> None:
    objects = load_repo(FIXTURE_REPO)
    assert sorted(v.name for v in objects.feature_views) == ["customer_profile", "merchant_risk"]
    assert sorted(s.name for s in objects.feature_services) == ["customer_features", "fraud_features"]
    tables = {t.name: t for t in source_tables(objects.feature_views, objects.entities, "fs")}
    assert tables["customer_profile_source"].columns == {
        "customer_id": "text", "avg_amount_30d": "double precision", "txn_count_7d": "bigint", "segment": "text",
        "is_vip": "boolean", "event_timestamp": "timestamptz", "created": "timestamptz"}

    package = f"pkg_{uuid.uuid4().hex[:8]}"
    root = write(tmp_path / package, {"__init__.py": "", "feature_repo/__init__.py": "",
                                      "feature_repo/entities.py": ENTITIES,
                                      "feature_repo/views.py": VIEWS.format(entities=".entities")})
    objects = load_repo(root / "feature_repo")  # imported as <package>.feature_repo.*, relative imports work
    assert [v.name for v in objects.feature_views] == ["account_stats"]
    assert type(objects.feature_views[0]).__module__ == "feast.feature_view"
    import sys
    assert f"{package}.feature_repo.views" in sys.modules


def test_a_configmap_volume_of_symlinks(tmp_path: Path) -> None:
    """Kubernetes mounts ConfigMap keys as symlinks into a hidden, timestamped folder."""
    volume = tmp_path / "cm"
    name = f"cm_features_{uuid.uuid4().hex[:8]}.py"
    write(volume / "..2026_01_01_00_00_00.1", {name: (FIXTURE_REPO / "features.py").read_text()})
    (volume / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (volume / name).symlink_to(f"..data/{name}")
    assert repo_files(volume) == [volume / name]
    assert len(load_repo(volume).feature_views) == 2


def test_a_module_name_clash_is_reported(tmp_path: Path) -> None:
    load_repo(FIXTURE_REPO)  # imports the top-level module `features`
    other = write(tmp_path / "other", {"features.py": (FIXTURE_REPO / "features.py").read_text()})
    with pytest.raises(ImportError, match="already loaded from"):
        load_repo(other)


def test_a_repo_without_views_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="defines no feature view"):
        load_repo(write(tmp_path / "empty", {}))


def test_feast_configuration_from_the_database_url() -> None:
    embedded = "postgresql://postgres@127.0.0.1:5999/flywheel"
    options = postgres_options(embedded, "featurestore")
    assert options | {} == options and options["host"] == "127.0.0.1" and options["port"] == 5999
    assert options["database"] == "flywheel" and options["user"] == "postgres" and options["password"] == ""
    assert options["sslmode"] == "disable" and options["db_schema"] == "featurestore"
    secure = postgres_options("postgresql://fly:s%40cret@db.example:5432/prod?sslmode=verify-full", "fs")
    assert secure["password"] == "s@cret" and secure["sslmode"] == "verify-full"
    assert registry_url("postgresql://fly:s%40cret@db.example:5432/prod?sslmode=require") == (
        "postgresql+psycopg://fly:s%40cret@db.example:5432/prod?sslmode=require")
    assert registry_url("host=/run/postgresql dbname=flywheel user=fly") == (
        "postgresql+psycopg://fly@/flywheel?host=%2Frun%2Fpostgresql")

    config = feast_config(embedded, "fs_test", "demo")
    assert config.project == "demo" and config.entity_key_serialization_version == 3
    assert config.registry.registry_type == "sql" and config.registry.path.startswith("postgresql+psycopg://")
    assert config.registry.sqlalchemy_config_kwargs["connect_args"] == {"options": "-csearch_path=fs_test"}
    assert config.offline_store.type == "postgres" and config.offline_store.db_schema == "fs_test"
    assert config.online_store.type == "postgres" and config.online_store.db_schema == "fs_test"
    assert config.online_store.sslmode == "disable"


def test_repo_setting_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = FeatureStoreSettings(_env_file=None, home=tmp_path, repo=str(tmp_path / "nope"))
    with pytest.raises(SystemExit, match="no such file or directory"):
        settings.repo_path()
    assert FeatureStoreSettings(_env_file=None, home=tmp_path, repo=str(FIXTURE_REPO)).repo_path() == FIXTURE_REPO
    monkeypatch.delenv("FLYWHEEL_FEATURESTORE_REPO", raising=False)
    with pytest.raises(SystemExit, match="no Feast repo configured: set FLYWHEEL_FEATURESTORE_REPO"):
        FeatureStoreSettings(_env_file=None, home=tmp_path).repo_path()
