"""Composition root of the monitor: the faust ingest app, the analysis worker, the outbox relay,
the gRPC server and the metrics endpoint, in one asyncio process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database
from flywheel.common.kafka import ensure_topics, new_producer
from flywheel.common.outbox import OutboxRelay
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.common.topics import (
    DRIFT_DETECTED,
    FEEDBACK_RECEIVED,
    PREDICTIONS_LOGGED,
    RETRAIN_REQUESTS,
    REVIEWS_REQUESTED,
)
from flywheel.monitor.analyzer import Analyzer
from flywheel.monitor.api import ROLES, MonitorServicer
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.handlers import DeadLetters, MonitorStream
from flywheel.monitor.ingest import SOURCE, Ingest
from flywheel.monitor.llm import OnlineScoring
from flywheel.monitor.llm_store import LlmReadStore
from flywheel.monitor.reference import ReferenceCache
from flywheel.monitor.store import MonitorStore
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MonitorService"].full_name
TOPICS = (PREDICTIONS_LOGGED, FEEDBACK_RECEIVED, DRIFT_DETECTED, RETRAIN_REQUESTS, REVIEWS_REQUESTED)


class MonitorApp:
    """The running monitor; `start` returns once it serves (and its consumers joined), `stop` drains."""

    def __init__(self, settings: MonitorSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        self.references = ReferenceCache(RegistryClient(
            settings.registry_addr, auth=settings.client_auth(), timeout=settings.rpc_timeout,
            transfer_timeout=settings.download_timeout))
        self.ingest = Ingest(settings)
        self.online = OnlineScoring(settings)
        self.dlq_producer = new_producer(settings.kafka_bootstrap, client_id=f"{SOURCE}-dlq")
        self.stream = MonitorStream(settings, self.db, self.ingest, DeadLetters(self.dlq_producer,
                                                                                  settings.consumer_group),
                                    self.online)
        self.analyzer = Analyzer(self.db, settings, self.references, self.online)
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id=f"{SOURCE}-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.rpc.component_health("outbox-relay"))
        self.store = MonitorStore(self.db, hysteresis_n=settings.hysteresis_n, hysteresis_m=settings.hysteresis_m,
                                  cooldown_seconds=settings.cooldown_seconds)
        self.rpc.add(pb_grpc.add_MonitorServiceServicer_to_server, MonitorServicer(self.store, LlmReadStore(self.db)),
                     SERVICE_NAME, ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await ensure_topics(self.settings.kafka_bootstrap, TOPICS)
        await self.dlq_producer.start()
        await self.relay.start()
        await self.stream.start()
        await self.analyzer.start()
        await self.rpc.start()
        log.info("monitor serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                           "window_mode": self.settings.window_mode})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.stream.stop()
        await self.analyzer.stop()
        await self.relay.stop()
        await self.dlq_producer.stop()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.monitor",
        description="Flywheel monitor: windows of logged predictions per model version, Evidently drift and "
                    "performance per window, drift.detected / retrain.requests / reviews.requested; gRPC "
                    "MonitorService. Configured by FLYWHEEL_* / FLYWHEEL_MONITOR_* environment variables "
                    "(see services/monitor/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_MONITOR_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = MonitorSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("monitor", settings, MonitorApp)
