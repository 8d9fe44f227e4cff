"""Composition root of the embedder: builds every part and runs the gRPC server, the model catalog
(registry -> cache -> loaded versions, hot swap), the documents.ingested and models.promoted consumers
and the metrics endpoint until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging

import torch

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database, advisory_lock
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import MAX_MESSAGE_BYTES
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.common.tasks import within
from flywheel.common.topics import DOCUMENTS_EMBEDDED
from flywheel.embedder.api import ROLES, EmbedderServicer
from flywheel.embedder.batching import Batcher
from flywheel.embedder.catalog import ModelCatalog
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.documents import DocumentEmbedder
from flywheel.embedder.embedding import Embedder
from flywheel.embedder.emitter import DirectPublisher
from flywheel.embedder.handlers import SOURCE, document_handlers, promotion_handlers
from flywheel.embedder.model import EmbeddedText, EmbeddingModel
from flywheel.proto.embedder.v1 import embedder_service_pb2 as pb
from flywheel.proto.embedder.v1 import embedder_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbedderService"].full_name


class EmbedderApp:
    """The running embedder; `start` returns once it serves (the default model loaded, or
    `initial_load_timeout` passed: health stays NOT_SERVING until it is), `stop` drains and closes."""

    def __init__(self, settings: EmbedderSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        # Every forward pass runs on this one thread (torch keeps a thread pool per calling thread).
        self.encoder_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedder-encode")
        self.db = Database(settings.database_url, settings.db_schema, min_size=1, max_size=4)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        # A channel per call: registry calls are few (resolving versions, downloads), and a kept channel that
        # first failed to connect (the registry starting at the same time) retries with a growing backoff.
        registry = RegistryClient(settings.registry_addr, auth=settings.client_auth(), timeout=settings.rpc_timeout,
                                  transfer_timeout=settings.download_timeout)
        self.catalog = ModelCatalog(
            registry, default_model=settings.model, cache=settings.model_cache(),
            max_loaded=settings.max_loaded_versions, new_batcher=self._new_batcher, bootstrap=settings.bootstrap,
            bootstrap_lock=lambda: advisory_lock(settings.database_url,
                                                 f"flywheel.embedder.bootstrap.{settings.model}"),
            on_serving=self.rpc.component_health("model"))
        self.embedder = Embedder(self.catalog, max_texts=settings.max_texts, max_total_chars=settings.max_total_chars)
        self.documents = DocumentEmbedder(self.catalog, chunk_tokens=settings.chunk_tokens,
                                          chunk_overlap=settings.chunk_overlap, max_message_bytes=MAX_MESSAGE_BYTES)
        self.publisher = DirectPublisher(settings.kafka_bootstrap, DOCUMENTS_EMBEDDED, client_id=f"{SOURCE}-documents",
                                         max_message_bytes=MAX_MESSAGE_BYTES,
                                         idempotent=settings.kafka_enable_idempotence)
        self.promotions = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.promotions_group,
                                         db=self.db, handlers=promotion_handlers(self.catalog), source=SOURCE,
                                         health=self.rpc.component_health("promotions-consumer"))
        self.consumer = ConsumerRunner(
            bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
            batch_handlers=document_handlers(self.documents, self.publisher), source=SOURCE,
            consumer_options={"max_poll_records": settings.documents_per_batch,
                              "max_poll_interval_ms": int(settings.max_poll_interval_s * 1000)},
            health=self.rpc.component_health("documents-consumer"))
        self.rpc.add(pb_grpc.add_EmbedderServiceServicer_to_server, EmbedderServicer(self.embedder, self.catalog),
                     SERVICE_NAME, ROLES)

    def _new_batcher(self, model: EmbeddingModel) -> Batcher[str, EmbeddedText]:
        return Batcher(model.encode, max_batch=self.settings.max_batch, max_wait_s=self.settings.max_wait_ms / 1000,
                       labels=(model.name, str(model.version)), executor=self.encoder_thread)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        await self.db.open()  # the common migrations only (processed events of the consumers)
        await self.auth.start()
        # gRPC listens from here on (health NOT_SERVING until the model and both consumers are up), so probes and
        # the launcher see the process while a first start registers and loads the model.
        await self.rpc.start()
        # The default model resolves and loads in the background meanwhile. A promotion between its first look
        # and the consumers' start is not missed: the promotions consumer reads from its committed offsets (the
        # whole topic for a new group). Documents that need the default model wait (Unavailable, retried).
        await self.catalog.start()
        await asyncio.gather(self.promotions.start(), self.consumer.start())
        try:
            await within(self.catalog.ready.wait(), self.settings.initial_load_timeout)
        except TimeoutError:
            log.warning("default embedding model not loaded yet; serving anyway (health NOT_SERVING until it is)",
                        extra={"model": self.settings.model})
        serving = self.catalog.serving
        log.info("embedder serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                            "model": self.settings.model,
                                            "version": serving.version if serving else None})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.promotions.stop()
        await self.publisher.stop()
        await self.catalog.stop()
        self.encoder_thread.shutdown(wait=False, cancel_futures=True)
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.embedder",
        description="Flywheel embedder: gRPC EmbedderService (dynamic batching), sentence embedding models from "
                    "the registry with hot swap on promotion, documents.ingested -> documents.embedded. Configured "
                    "by FLYWHEEL_* / FLYWHEEL_EMBEDDER_* environment variables (see services/embedder/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_EMBEDDER_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = EmbedderSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    run_service("embedder", settings, EmbedderApp)
