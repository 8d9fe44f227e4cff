"""Composition root of the evaluator: builds every part and runs the gRPC server, the evaluation
worker, the models.registered / feedback.received / reviews.* consumer, the outbox relay and the metrics
endpoint until SIGTERM; pushes the configured golden sets on start."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.embedder import EmbedderClient
from flywheel.common.clients.featurestore import FeatureStoreClient
from flywheel.common.clients.generation import GenerationClient
from flywheel.common.clients.guard import GuardClient
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import OutboxRelay
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.evaluator.api import ROLES, EvaluatorServicer
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.evaluator.evaluator import SOURCE, Evaluator
from flywheel.evaluator.handlers import batch_handlers, handlers
from flywheel.evaluator.llm_evaluation import LlmEvaluations
from flywheel.evaluator.llm_metrics import Prices
from flywheel.evaluator.store import EvaluatorStore
from flywheel.predictive.spec import SpecCatalog
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EvaluatorService"].full_name


class EvaluatorApp:
    """The running evaluator; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: EvaluatorSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        registry = RegistryClient(settings.registry_addr, auth=settings.client_auth(), timeout=settings.rpc_timeout,
                                  transfer_timeout=settings.download_timeout)
        self.llm_clients: list[GenerationClient | EmbedderClient | GuardClient] = []
        self.llm: LlmEvaluations | None = None
        if settings.llm:
            generator = GenerationClient(settings.inference_addr, auth=settings.client_auth(),
                                         timeout=settings.generation_timeout)
            embedder = EmbedderClient(settings.embedder_addr, auth=settings.client_auth(),
                                      timeout=settings.rpc_timeout) if settings.semantic_similarity else None
            guard = GuardClient(settings.guard_addr, auth=settings.client_auth(),
                                timeout=settings.rpc_timeout) if settings.toxicity else None
            self.llm_clients = [c for c in (generator, embedder, guard) if c is not None]
            self.llm = LlmEvaluations(
                EvaluatorStore(self.db), registry, generator, embedder=embedder, guard=guard,
                prices=Prices(settings.price_per_1k_prompt_tokens, settings.price_per_1k_completion_tokens),
                concurrency=settings.llm_concurrency)
        self.evaluator = Evaluator(
            self.db, SpecCatalog(settings.specs_dir, "FLYWHEEL_EVALUATOR_SPECS_DIR"),
            FeatureStoreClient(settings.featurestore_addr, auth=settings.client_auth(),
                               timeout=settings.feature_timeout, request_rows=settings.feature_request_rows),
            registry,
            max_rows=settings.max_rows, min_rows=settings.min_rows, min_positives=settings.min_positives,
            max_wait_seconds=settings.max_wait_seconds, label_poll_seconds=settings.label_poll_seconds,
            lookback_seconds=settings.lookback_seconds, min_slice_rows=settings.min_slice_rows,
            poll_interval=settings.poll_interval, llm=self.llm)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
                                       handlers=handlers(self.evaluator),
                                       batch_handlers=batch_handlers(self.evaluator), source=SOURCE,
                                       health=self.rpc.component_health("consumer"))
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id=f"{SOURCE}-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.rpc.component_health("outbox-relay"))
        self.rpc.add(pb_grpc.add_EvaluatorServiceServicer_to_server, EvaluatorServicer(self.evaluator), SERVICE_NAME,
                     ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        await self.relay.start()
        if self.llm is not None and self.settings.golden_dir is not None:
            await self.llm.push_golden_dir(self.settings.golden_dir)
        await self.evaluator.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("evaluator serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                             "specs_dir": str(self.settings.specs_dir)})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.evaluator.stop()
        await self.relay.stop()
        for client in self.llm_clients:
            await client.close()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.evaluator",
        description="Flywheel evaluator: gRPC EvaluatorService, evaluation worker, models.registered and "
                    "feedback.received consumer; emits evaluations.completed. Configured by FLYWHEEL_* / "
                    "FLYWHEEL_EVALUATOR_* environment variables (see services/evaluator/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_EVALUATOR_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = EvaluatorSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("evaluator", settings, EvaluatorApp)
