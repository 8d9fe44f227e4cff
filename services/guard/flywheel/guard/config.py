"""Settings of the guard process (env prefix FLYWHEEL_GUARD_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared


class GuardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_GUARD_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50059, description="gRPC port (GuardService, health, reflection).")
    metrics_port: int = Field(9109, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("guard", description="PostgreSQL schema the guard owns (policies, verdicts, outbox).")
    promotions_group: str = Field(
        default_factory=lambda: f"guard-{socket.gethostname()}",
        description="Kafka consumer group for models.promoted; unique per replica (every replica swaps to a new "
                    "detectors champion). Default: guard-<hostname>.")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    detectors_model: str = Field(
        "guard-detectors", description="Registry model holding the guard's trained detectors; its champion "
                                       "(or, without one, the bootstrapped version) scores the checks.")
    bootstrap: bool = Field(
        True, description="On start, when the detectors model has no version, register the detectors the guard "
                          "ships (trained on its data; tagged bootstrap=shipped-data).")
    bootstrap_dir: Path | None = Field(
        None, description="Register this detectors directory (e.g. written by `flywheel guard train --out DIR`) "
                          "instead of the shipped one; unset = the shipped one.")
    bootstrap_train: bool = Field(
        False, description="Train the detectors on the shipped data at the first start instead (14-60 s on 2 "
                           "cores, longer than `make run` waits for a service).")
    policies_dir: Path | None = Field(
        None, description="Directory of seed policies (<application>.yaml): each is stored as version 1 of an "
                          "application that has no policy yet. `make run` sets it from the installed projects' "
                          "settings (the demo's support-assistant policy).")
    cache_dir: Path | None = Field(
        None, description="Where detector artifacts are unpacked, one folder per sha256; unset = "
                          "<FLYWHEEL_HOME>/model-dirs.")
    rpc_timeout: float = Field(10.0, gt=0, description="Deadline of short calls to the registry, in seconds.")
    download_timeout: float = Field(120.0, gt=0, description="Deadline of downloading or registering detectors.")
    initial_load_timeout: float = Field(
        120.0, gt=0, description="How long start-up waits for the detectors (bootstrap + load) before serving "
                                 "anyway; health stays NOT_SERVING and checks answer UNAVAILABLE until they load.")
    audit_queue: int = Field(
        10_000, ge=1, description="Verdicts waiting for the audit writer at most; when full, checks wait.")
    audit_batch: int = Field(200, ge=1, description="Most verdicts written in one transaction.")

    @field_validator("bootstrap_dir", "policies_dir", "cache_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def model_cache(self) -> Path:
        return self.cache_dir or Path(self.home) / "model-dirs"
