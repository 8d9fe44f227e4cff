"""Composition root of the fine-tuner: builds every part and runs the gRPC server, the run scheduler, the
reviews.requested / reviews.completed / retrain.requests consumer and the metrics endpoint until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.finetuner.api import ROLES, FinetunerServicer
from flywheel.finetuner.config import FinetunerSettings
from flywheel.finetuner.finetuner import SOURCE, Finetuner
from flywheel.finetuner.handlers import batch_handlers, handlers
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FinetunerService"].full_name


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
        return f"flywheel-finetuner=={version('flywheel-finetuner')}"
    except PackageNotFoundError:
        return "flywheel-finetuner (unknown version)"


class FinetunerApp:
    """The running fine-tuner; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: FinetunerSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        self.registry = RegistryClient(settings.registry_addr, auth=settings.client_auth(),
                                       timeout=settings.rpc_timeout, transfer_timeout=settings.transfer_timeout)
        self.finetuner = Finetuner(
            self.db, self.registry, work_dir=settings.work_root(), defaults=settings.lora(),
            applications=settings.applications, correction_threshold=settings.correction_threshold,
            code_version=detect_code_version(settings.code_version), torch_threads=settings.torch_threads,
            min_train_examples=settings.min_train_examples, max_attempts=settings.max_attempts,
            max_concurrent_runs=settings.max_concurrent_runs, poll_interval=settings.poll_interval,
            retention_days=settings.retention_days, teacher_answers=settings.teacher_answers_per_application)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
                                       handlers=handlers(self.finetuner), batch_handlers=batch_handlers(self.finetuner),
                                       source=SOURCE, health=self.rpc.component_health("consumer"))
        self.rpc.add(pb_grpc.add_FinetunerServiceServicer_to_server, FinetunerServicer(self.finetuner), SERVICE_NAME,
                     ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await self.finetuner.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("fine-tuner serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                              "work_dir": str(self.settings.work_root())})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.finetuner.stop()
        await self.registry.close()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.finetuner",
        description="Flywheel fine-tuner: gRPC FinetunerService, LoRA run scheduler, reviews.requested / "
                    "reviews.completed / retrain.requests consumer. Configured by FLYWHEEL_* / FLYWHEEL_FINETUNER_* "
                    "environment variables (see services/finetuner/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_FINETUNER_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = FinetunerSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("finetuner", settings, FinetunerApp)
