"""Composition root of the registry: builds every part and runs the gRPC server, the
outbox relay, the evaluations consumer and the metrics endpoint until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flywheel.common.artifacts import artifact_store_from_uri
from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import OutboxRelay
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry.api import ROLES, RegistryServicer
from flywheel.registry.config import RegistrySettings
from flywheel.registry.handlers import handlers
from flywheel.registry.registry import SOURCE, Registry

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


class RegistryApp:
    """The running registry; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: RegistrySettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        artifacts = artifact_store_from_uri(settings.artifact_store_uri(),
                                            s3_endpoint_url=settings.s3_endpoint_url or None)
        self.registry = Registry(self.db, artifacts, max_artifact_bytes=settings.max_artifact_bytes,
                                 import_prefixes=settings.allowed_import_prefixes())
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id="flywheel-registry-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.rpc.component_health("outbox-relay"))
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group,
                                       db=self.db, handlers=handlers(self.registry), source=SOURCE,
                                       health=self.rpc.component_health("consumer"))
        self.rpc.add(pb_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(self.registry), SERVICE_NAME,
                     ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await self.relay.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("registry serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.relay.stop()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.registry",
        description="Flywheel model registry: gRPC RegistryService, outbox relay, evaluations consumer. "
                    "Configured by FLYWHEEL_* / FLYWHEEL_REGISTRY_* environment variables (see README).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_REGISTRY_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = RegistrySettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("registry", settings, RegistryApp)
