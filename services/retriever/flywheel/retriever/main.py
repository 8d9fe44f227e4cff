"""Composition root of the retriever: builds every part and runs the gRPC server, the documents.embedded /
models.promoted consumer, the re-indexer, the outbox relay (documents.ingested) and the metrics endpoint
until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.embedder import EmbedderClient
from flywheel.common.clients.ports import TextEmbedder
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import OutboxRelay
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.proto.retriever.v1 import retriever_service_pb2_grpc as pb_grpc
from flywheel.retriever.api import ROLES, RetrieverServicer
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.handlers import batch_handlers, handlers
from flywheel.retriever.indexing import SOURCE, Indexer
from flywheel.retriever.retriever import Retriever
from flywheel.retriever.store import RetrieverDatabase, RetrieverStore

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrieverService"].full_name


def search_settings(settings: RetrieverSettings) -> dict[str, str]:
    """Session defaults of every connection: pgvector's search settings, and a plan per execution of a prepared
    statement (a cached generic plan cannot know whether a query's scope is 30 chunks or 3 million, so it could
    walk the HNSW index for the one or sort the other)."""
    return {"hnsw.ef_search": str(settings.hnsw_ef_search), "hnsw.iterative_scan": settings.hnsw_iterative_scan,
            "hnsw.max_scan_tuples": str(settings.hnsw_max_scan_tuples), "plan_cache_mode": "force_custom_plan"}


class RetrieverApp:
    """The running retriever; `start` returns once it serves, `stop` drains and closes. `embedder` replaces the
    EmbedderClient (tests)."""

    def __init__(self, settings: RetrieverSettings, *, embedder: TextEmbedder | None = None) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = RetrieverDatabase(settings.database_url, settings.db_schema,
                                    session_settings=search_settings(settings), max_size=settings.db_pool_size)
        self.store = RetrieverStore(self.db, hnsw_m=settings.hnsw_m, hnsw_ef_construction=settings.hnsw_ef_construction,
                                    index_build_memory=settings.index_build_memory)
        self.auth = Authenticator(TokenStore(self.db))
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls())
        self.embedder = embedder or EmbedderClient(settings.embedder_addr, auth=settings.client_auth(),
                                                   timeout=settings.embed_timeout)
        self.indexer = Indexer(self.db, self.store, reindex_batch=settings.reindex_batch,
                               poll_interval=settings.reindex_poll_seconds)
        self.retriever = Retriever(
            self.db, self.store, self.indexer, self.embedder, embedding_model=settings.embedding_model,
            max_document_bytes=settings.max_document_bytes, max_text_bytes=settings.max_text_bytes,
            max_documents_per_request=settings.max_documents_per_request, candidates=settings.candidates,
            exact_search_max_rows=settings.exact_search_max_rows)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
                                       handlers=handlers(self.indexer), batch_handlers=batch_handlers(self.indexer),
                                       source=SOURCE, health=self.rpc.component_health("consumer"))
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id=f"{SOURCE}-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.rpc.component_health("outbox-relay"))
        self.rpc.add(pb_grpc.add_RetrieverServiceServicer_to_server, RetrieverServicer(self.retriever), SERVICE_NAME,
                     ROLES)

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.store.known_vector_indexes()
        await self.auth.start()
        await self.relay.start()
        await self.indexer.start()
        await self.consumer.start()
        await self.rpc.start()
        log.info("retriever serving", extra={"grpc": self.address, "metrics_port": self.settings.metrics_port,
                                             "embedder": self.settings.embedder_addr})

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.consumer.stop()
        await self.indexer.stop()
        await self.relay.stop()
        await self.embedder.close()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.retriever",
        description="Flywheel retriever: gRPC RetrieverService (collections, ingestion, hybrid retrieval), "
                    "documents.embedded and models.promoted consumer, re-indexer; emits documents.ingested. "
                    "Configured by FLYWHEEL_* / FLYWHEEL_RETRIEVER_* environment variables (see "
                    "services/retriever/README.md).")
    parser.add_argument("--port", type=int, help="gRPC port (overrides FLYWHEEL_RETRIEVER_GRPC_PORT)")
    args = parser.parse_args(argv)
    settings = RetrieverSettings()
    if args.port is not None:
        settings.grpc_port = args.port
    import uvloop  # libuv's loop: its wake-ups cost less per call (the gRPC call and the query it waits on)

    run_service("retriever", settings, RetrieverApp, loop_factory=uvloop.new_event_loop)
