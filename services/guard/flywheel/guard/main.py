"""Composition root of the guard: builds every part and runs the gRPC server, the policy book (hot
reload), the detectors catalog (registry champion, bootstrap, hot swap on models.promoted), the audit
writer, the outbox relay and the metrics endpoint until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database, advisory_lock
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import OutboxRelay
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.common.tasks import within
from flywheel.guard.api import ROLES, GuardServicer
from flywheel.guard.audit import SOURCE, AuditWriter
from flywheel.guard.catalog import DetectorCatalog
from flywheel.guard.checks import Guard
from flywheel.guard.config import GuardSettings
from flywheel.guard.handlers import promotion_handlers
from flywheel.guard.policies import PolicyBook
from flywheel.guard.store import GuardStore
from flywheel.proto.guard.v1 import guard_service_pb2 as pb
from flywheel.proto.guard.v1 import guard_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GuardService"].full_name


class GuardApp:
    """The running guard; `start` returns once it serves (detectors loaded, or `initial_load_timeout`
    passed: health stays NOT_SERVING until they are), `stop` drains and closes."""

    def __init__(self, settings: GuardSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema, min_size=1, max_size=6)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        self.store = GuardStore(self.db)
        self.policies = PolicyBook(self.store)
        self.catalog = DetectorCatalog(
            RegistryClient(settings.registry_addr, auth=settings.client_auth(), timeout=settings.rpc_timeout,
                           transfer_timeout=settings.download_timeout),
            model_name=settings.detectors_model, cache=settings.model_cache(), bootstrap=settings.bootstrap,
            bootstrap_dir=settings.bootstrap_dir, bootstrap_train=settings.bootstrap_train,
            bootstrap_lock=lambda: advisory_lock(settings.database_url,
                                                 f"flywheel.guard.bootstrap.{settings.detectors_model}"),
            on_serving=self.rpc.component_health("detectors"))
        self.audit = AuditWriter(self.store, max_queue=settings.audit_queue, max_batch=settings.audit_batch)
        self.guard = Guard(self.policies, self.catalog, self.audit)
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id=f"{SOURCE}-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.rpc.component_health("outbox-relay"))
        self.promotions = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.promotions_group,
                                         db=self.db, handlers=promotion_handlers(self.catalog), source=SOURCE,
                                         health=self.rpc.component_health("promotions-consumer"))
        self.rpc.add(pb_grpc.add_GuardServiceServicer_to_server, GuardServicer(self.guard, self.policies),
                     SERVICE_NAME, ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        if self.settings.policies_dir is not None:
            await self.policies.seed(self.settings.policies_dir)
        await self.policies.start()
        await self.relay.start()
        await self.audit.start()
        # gRPC listens from here on (health NOT_SERVING until the detectors load), so probes and the launcher
        # see the process while a first start trains and registers the detectors.
        await self.rpc.start()
        await self.catalog.start()
        await self.promotions.start()
        try:
            await within(self.catalog.ready.wait(), self.settings.initial_load_timeout)
        except TimeoutError:
            log.warning("guard detectors not loaded yet; serving anyway (health NOT_SERVING until they are)",
                        extra={"model": self.settings.detectors_model})
        serving = self.catalog.serving
        log.info("guard serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                         "detectors": serving.ref if serving else None})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.promotions.stop()
        await self.audit.stop()
        await self.relay.stop()
        await self.policies.stop()
        await self.catalog.stop()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.guard",
        description="Flywheel guard: gRPC GuardService (CheckInput, CheckOutput incl. streamed windows, versioned "
                    "policies), detectors from the registry with hot swap on promotion; emits guard.verdicts and "
                    "reviews.requested. Configured by FLYWHEEL_* / FLYWHEEL_GUARD_* environment variables (see "
                    "services/guard/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_GUARD_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = GuardSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("guard", settings, GuardApp)
