"""Settings of the trainer process (env prefix FLYWHEEL_TRAINER_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINER_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50053, description="gRPC port (TrainerService, health, reflection).")
    metrics_port: int = Field(9103, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("trainer", description="PostgreSQL schema the trainer owns (runs, labels).")
    consumer_group: str = Field(
        "trainer", description="Kafka consumer group for feedback.received and retrain.requests.")
    specs_dir: Path | None = Field(
        None, description="Directory of model specs (<name>.yaml); unset = none (runs fail with NotFound). "
                          "`make run` sets it from the installed projects' settings (e.g. the payments demo's).")
    featurestore_addr: str = shared(  # type: ignore[assignment]
        "featurestore_addr", "127.0.0.1:50052", "Feature store gRPC address (FLYWHEEL_FEATURESTORE_ADDR).")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    rpc_timeout: float = Field(10.0, description="Deadline of short calls to other services, in seconds.")
    training_set_timeout: float = Field(
        600.0, description="Deadline of one GetHistoricalFeatures call, in seconds.")
    register_timeout: float = Field(
        300.0, description="Deadline of uploading and registering one artifact, in seconds.")
    feature_page_size: int = Field(5000, description="Rows per page asked of GetHistoricalFeatures.")
    feature_request_rows: int = Field(
        100, description="Entity rows per GetHistoricalFeatures call. Small because the feature store's point-in-"
                         "time join grows faster than linearly with the rows of one call (see README).")
    torch_threads: int = Field(1, description="CPU threads one training uses (fixed, for reproducible results).")
    max_concurrent_runs: int = Field(
        1, description="Runs executed at once (of different models); training itself is serialized in-process.")
    profile_sample_rows: int = Field(2000, description="Training rows kept raw in the reference profile.")
    code_version: str = Field(
        "", description="Code version recorded in lineage; empty = the git commit, else the package version.")
    label_wait_seconds: float = Field(
        120.0, ge=0, description="A run asked for by retrain.requests waits up to this long for its window's labels "
                                 "(they may still be in flight on feedback.received) before failing.")
    poll_interval: float = Field(1.0, description="How often the run scheduler looks for queued runs, in seconds.")

    @field_validator("specs_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value
