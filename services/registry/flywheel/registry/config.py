"""Settings of the registry process (env prefix FLYWHEEL_REGISTRY_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_REGISTRY_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50051, description="gRPC port (RegistryService, health, reflection).")
    metrics_port: int = Field(9101, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("registry", description="PostgreSQL schema the registry owns.")
    artifact_store: str = Field(
        "", description="Artifact store URI: file:///path or s3://bucket/prefix; empty = <FLYWHEEL_HOME>/artifacts.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, moto); empty = AWS.")
    max_artifact_bytes: int = Field(4 * 1024**3, description="Largest artifact accepted, in bytes.")
    consumer_group: str = Field("registry", description="Kafka consumer group for evaluations.completed.")
    import_prefixes: list[str] = Field(
        default_factory=list,
        description="Where RegisterModelVersion may import from by artifact_uri (JSON list of folders: "
                    "s3://bucket/prefix/ or file:///absolute/dir/); empty = <FLYWHEEL_HOME>/imports only. "
                    "Anything else is refused, so a client cannot make the registry read arbitrary server files "
                    "or any bucket its credentials reach.")

    @field_validator("import_prefixes")
    @classmethod
    def _folders_only(cls, prefixes: list[str]) -> list[str]:
        """Each prefix names one folder: a bucket (and maybe a key prefix) or an absolute directory, ending
        with `/` (added when missing), so `s3://models` never lets `s3://models-evil/...` through."""
        checked = []
        for prefix in prefixes:
            parts = urlsplit(prefix)
            if parts.scheme == "s3" and parts.netloc:
                pass
            elif parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
                prefix = Path(parts.path).resolve().as_uri()
            else:
                raise ValueError(f"import prefix {prefix!r} must be s3://<bucket>[/<prefix>] or file:///<absolute "
                                 "dir> (a bare s3:// would allow every bucket the credentials reach)")
            checked.append(prefix if prefix.endswith("/") else prefix + "/")
        return checked

    def allowed_import_prefixes(self) -> tuple[str, ...]:
        return tuple(self.import_prefixes) or ((self.home / "imports").resolve().as_uri() + "/",)

    def artifact_store_uri(self) -> str:
        return self.artifact_store or (self.home / "artifacts").resolve().as_uri()
