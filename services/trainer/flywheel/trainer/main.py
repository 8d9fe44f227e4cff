"""Composition root of the trainer: builds every part and runs the gRPC server, the run
scheduler, the feedback / retrain consumer and the metrics endpoint until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.featurestore import FeatureStoreClient
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.predictive.spec import SpecCatalog
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from flywheel.trainer.api import ROLES, TrainerServicer
from flywheel.trainer.config import TrainerSettings
from flywheel.trainer.handlers import batch_handlers, handlers
from flywheel.trainer.trainer import SOURCE, Trainer

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainerService"].full_name


def detect_code_version(configured: str = "") -> str:
    """The configured version, else the git commit of this checkout, else the package version."""
    if configured:
        return configured
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=False)
        if result.returncode == 0 and len(result.stdout.strip()) == 40:
            return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"flywheel-trainer=={version('flywheel-trainer')}"
    except PackageNotFoundError:
        return "flywheel-trainer (unknown version)"


class TrainerApp:
    """The running trainer; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: TrainerSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        self.trainer = Trainer(
            self.db, SpecCatalog(settings.specs_dir, "FLYWHEEL_TRAINER_SPECS_DIR"),
            FeatureStoreClient(settings.featurestore_addr, auth=settings.client_auth(),
                               timeout=settings.training_set_timeout, page_size=settings.feature_page_size,
                               request_rows=settings.feature_request_rows),
            RegistryClient(settings.registry_addr, auth=settings.client_auth(), timeout=settings.rpc_timeout,
                           transfer_timeout=settings.register_timeout),
            code_version=detect_code_version(settings.code_version), torch_threads=settings.torch_threads,
            max_concurrent_runs=settings.max_concurrent_runs, profile_sample_rows=settings.profile_sample_rows,
            poll_interval=settings.poll_interval, label_wait_seconds=settings.label_wait_seconds)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
                                       handlers=handlers(self.trainer), batch_handlers=batch_handlers(self.trainer),
                                       source=SOURCE, health=self.rpc.component_health("consumer"))
        self.rpc.add(pb_grpc.add_TrainerServiceServicer_to_server, TrainerServicer(self.trainer), SERVICE_NAME, ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await self.trainer.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("trainer serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                           "specs_dir": str(self.settings.specs_dir)})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.trainer.stop()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.trainer",
        description="Flywheel trainer: gRPC TrainerService, run scheduler, feedback.received and retrain.requests "
                    "consumer. Configured by FLYWHEEL_* / FLYWHEEL_TRAINER_* environment variables (see README).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_TRAINER_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = TrainerSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("trainer", settings, TrainerApp)
