"""Settings of the feature store process (env prefix FLYWHEEL_FEATURESTORE_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings


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
        "", description="Path to the Feast repo: a directory (or one .py file) of Feast definitions; required. "
                        "`make run` sets it from the installed projects' settings (e.g. the payments demo's).")
    consumer_group: str = Field("featurestore", description="Kafka consumer group for features.updates.")
    online_threads: int = Field(4, description="Threads serving online lookups (Feast calls block).")
    registry_cache_ttl_seconds: int = Field(
        0, description="How long Feast may serve from its cached registry before re-reading it; 0 = for the "
                       "life of the process (the repo is applied at start, so it only changes on a restart).")

    def repo_path(self) -> Path:
        """The Feast repo to load; a clear SystemExit when none is configured or it does not exist."""
        if not self.repo:
            raise SystemExit("no Feast repo configured: set FLYWHEEL_FEATURESTORE_REPO to the directory of your Feast "
                             "definitions (`make run` sets it from the installed projects, e.g. the payments demo)")
        path = Path(self.repo).expanduser().resolve()
        if not path.exists():
            raise SystemExit(f"FLYWHEEL_FEATURESTORE_REPO={self.repo!r}: no such file or directory")
        return path
