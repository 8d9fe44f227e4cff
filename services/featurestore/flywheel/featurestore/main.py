"""Composition root of the feature store: builds every part and runs Feast (applied from the repo at start),
the gRPC server, the features.updates consumer and the metrics endpoint until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.featurestore.api import ROLES, FeatureStoreServicer
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.features import SOURCE, Features
from flywheel.featurestore.handlers import batch_handlers
from flywheel.featurestore.repo import feast_config
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureStoreService"].full_name


class FeatureStoreApp:
    """The running feature store; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: FeatureStoreSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.repo_path = settings.repo_path()
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        config = feast_config(settings.database_url, settings.db_schema, settings.project,
                              cache_ttl_seconds=settings.registry_cache_ttl_seconds,
                              online_pool_size=settings.online_threads + 2)
        self.features = Features(self.db, config, self.repo_path, online_threads=settings.online_threads)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group,
                                       db=self.db, batch_handlers=batch_handlers(self.features), source=SOURCE,
                                       health=self.rpc.component_health("consumer"))
        self.rpc.add(pb_grpc.add_FeatureStoreServiceServicer_to_server, FeatureStoreServicer(self.features),
                     SERVICE_NAME, ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await self.features.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("feature store serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                                 "repo": str(self.repo_path)})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.features.close()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.featurestore",
        description="Flywheel feature store: a Feast repo on PostgreSQL behind gRPC FeatureStoreService, fed by "
                    "features.updates. Configured by FLYWHEEL_* / FLYWHEEL_FEATURESTORE_* environment variables "
                    "(see README).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_FEATURESTORE_GRPC_PORT)")
    parser.add_argument("--repo", help="Feast repo directory (overrides FLYWHEEL_FEATURESTORE_REPO)")
    args = parser.parse_args(argv)
    settings = FeatureStoreSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    if args.repo is not None:
        settings.repo = args.repo
    run_service("featurestore", settings, FeatureStoreApp)
