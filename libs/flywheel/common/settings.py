"""Settings shared by every service process, read from FLYWHEEL_* environment variables.

Each service subclasses `ServiceSettings` with its own env prefix (e.g.
`FLYWHEEL_REGISTRY_`) for its own fields; the connection settings below are shared
by all services and keep their `FLYWHEEL_` names. When the broker or database
address is not set, the address the embedded stack wrote to `.flywheel/stack.json`
is used, so `make run` needs no configuration at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.common.rpc import ClientAuth, ServerTls

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class Readiness:
    """Where a service answers and how `make run` knows it is ready: grpc.health.v1 reporting SERVING
    at a gRPC address, or an HTTP GET of `path` answering 200 (a service without gRPC, e.g. the review app)."""

    protocol: Literal["grpc", "http"]
    # host:port
    address: str
    path: str = ""

    def describe(self) -> str:
        return f"grpc {self.address}" if self.protocol == "grpc" else f"http http://{self.address}"


def shared(name: str, default: object, description: str) -> object:
    """A field that every service reads from the same `FLYWHEEL_<NAME>` variable."""
    env = f"FLYWHEEL_{name.upper()}"
    return Field(default, validation_alias=AliasChoices(env, env.lower()), description=description)


class ServiceSettings(BaseSettings):
    """Connection and runtime settings common to every Flywheel service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", populate_by_name=True)

    home: Path = shared("home", Path(".flywheel"), "Data directory of the embedded stack and local artifacts.")  # type: ignore[assignment]
    kafka_bootstrap: str = shared(  # type: ignore[assignment]
        "kafka_bootstrap", "", "Kafka bootstrap servers (host:port,...); empty = the embedded broker."
    )
    kafka_enable_idempotence: bool = shared(  # type: ignore[assignment]
        "kafka_enable_idempotence", False,
        "Idempotent producers; only for real Kafka (the embedded broker refuses InitProducerId).",
    )
    database_url: str = shared(  # type: ignore[assignment]
        "database_url", "", "PostgreSQL URL (postgresql://...); empty = the embedded database."
    )
    otlp_endpoint: str = shared("otlp_endpoint", "", "OTLP/gRPC endpoint for traces; empty = no export.")  # type: ignore[assignment]
    log_level: str = shared("log_level", "INFO", "Log level of the JSON logs.")  # type: ignore[assignment]
    log_json: bool = shared("log_json", True, "Log as JSON lines (false = plain text for a terminal).")  # type: ignore[assignment]
    token: str = shared(  # type: ignore[assignment]
        "token", "", "Bearer token this process presents when it calls other services (a `service` token).")
    tls_ca_file: str = shared(  # type: ignore[assignment]
        "tls_ca_file", "", "CA (PEM) that signs the services' certificates; set = gRPC over TLS both ways.")
    tls_cert_file: str = shared(  # type: ignore[assignment]
        "tls_cert_file", "", "This process's certificate (PEM): served by its gRPC/HTTP servers, shown as client.")
    tls_key_file: str = shared("tls_key_file", "", "Private key (PEM) of tls_cert_file.")  # type: ignore[assignment]
    tls_client_auth: bool = shared(  # type: ignore[assignment]
        "tls_client_auth", False, "Servers require a client certificate signed by tls_ca_file (mutual TLS).")

    @model_validator(mode="after")
    def _fill_from_embedded_stack(self) -> ServiceSettings:
        if self.kafka_bootstrap and self.database_url:
            return self
        stack = read_stack_file(self.home)
        if not self.kafka_bootstrap:
            self.kafka_bootstrap = stack.get("kafka_bootstrap", "")
        if not self.database_url:
            self.database_url = stack.get("database_url", "")
        return self

    def client_auth(self) -> ClientAuth:
        """How this process authenticates to other services (token, TLS)."""
        return ClientAuth(token=self.token, ca_file=self.tls_ca_file, cert_file=self.tls_cert_file,
                          key_file=self.tls_key_file)

    def server_tls(self) -> ServerTls | None:
        """TLS of this process's servers when a certificate is configured (mutual with tls_client_auth)."""
        if not (self.tls_cert_file and self.tls_key_file):
            return None
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.tls_client_auth)

    def readiness(self) -> Readiness:
        """How `make run` knows this service is ready: grpc.health.v1 on its gRPC address by default; a
        service without gRPC overrides it with an HTTP readiness check."""
        return Readiness("grpc", f"{getattr(self, 'grpc_host', '127.0.0.1')}:{getattr(self, 'grpc_port', 0)}")

    def console_notes(self) -> list[str]:
        """Lines `make run` prints under this service once it is ready (e.g. how to log in); none by default."""
        return []

    def require_infrastructure(self) -> None:
        """Fail with a clear message when no broker or database is configured."""
        missing = [n for n, v in (("FLYWHEEL_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                                  ("FLYWHEEL_DATABASE_URL", self.database_url)) if not v]
        if missing:
            raise SystemExit(
                f"{' and '.join(missing)} not set and no embedded stack found in {self.home}/{STACK_FILE}: "
                "run `make run` (or `python -m flywheel.common.embedded`), or point them at Kafka/PostgreSQL."
            )


def read_stack_file(home: Path) -> dict[str, str]:
    path = Path(home) / STACK_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
