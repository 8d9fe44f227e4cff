"""Settings of the feature store process (env prefix FLYWHEEL_FEATURESTORE_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings

# The Feast repo used when FLYWHEEL_FEATURESTORE_REPO is not set: the payments demo's, if installed.
DEFAULT_REPO_MODULE = "payments_demo.feature_repo"


class FeatureStoreSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_FEATURESTORE_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50052, description="gRPC port (FeatureStoreService, health, reflection).")
    metrics_port: int = Field(9102, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field(
        "featurestore", description="PostgreSQL schema the feature store owns: Feast's SQL registry, the online "
                                    "store tables and the offline source tables all live in it.")
    project: str = Field("flywheel", description="Feast project name the repo's objects are applied to.")
    repo: str = Field(
        "", description="Path to the Feast repo: a directory (or one .py file) of Feast definitions. Empty = the "
                        f"payments demo's repo (the importable `{DEFAULT_REPO_MODULE}`).")
    consumer_group: str = Field("featurestore", description="Kafka consumer group for features.updates.")
    online_threads: int = Field(4, description="Threads serving online lookups (Feast calls block).")
    registry_cache_ttl_seconds: int = Field(
        0, description="How long Feast may serve from its cached registry before re-reading it; 0 = for the "
                       "life of the process (the repo is applied at start, so it only changes on a restart).")

    def repo_path(self) -> Path:
        """The Feast repo to load: `repo`, else the payments demo's; a clear SystemExit when there is none."""
        if self.repo:
            path = Path(self.repo).expanduser().resolve()
            if not path.exists():
                raise SystemExit(f"FLYWHEEL_FEATURESTORE_REPO={self.repo!r}: no such file or directory")
            return path
        found = default_repo()
        if found is None:
            raise SystemExit(
                "no Feast repo configured: set FLYWHEEL_FEATURESTORE_REPO to the directory of your Feast "
                f"definitions, or install the payments demo (which provides `{DEFAULT_REPO_MODULE}`)")
        return found


def default_repo() -> Path | None:
    """The folder (or file) of the importable `payments_demo.feature_repo`; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(DEFAULT_REPO_MODULE)
    except ModuleNotFoundError:
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve() if spec.origin else None
