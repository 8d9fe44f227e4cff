"""Settings of the retriever process (env prefix FLYWHEEL_RETRIEVER_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.outbox import MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES_ENV
from flywheel.common.settings import ServiceSettings, shared

# What a documents.ingested event carries besides the text (ids, title, source, metadata, headers): the
# text limit must leave this much room under the outbox's message size limit.
EVENT_OVERHEAD_BYTES = 64 * 1024


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_RETRIEVER_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50056, description="gRPC port (RetrieverService, health, reflection).")
    metrics_port: int = Field(9106, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("retriever", description="PostgreSQL schema the retriever owns (collections, documents, "
                                                    "chunks).")
    db_pool_size: int = Field(10, gt=0, description="Connections in the retriever's database pool.")
    consumer_group: str = Field("retriever", description="Kafka consumer group for documents.embedded and "
                                                         "models.promoted.")
    embedder_addr: str = shared(  # type: ignore[assignment]
        "embedder_addr", "127.0.0.1:50055", "Embedder gRPC address (FLYWHEEL_EMBEDDER_ADDR); text queries are "
                                            "embedded there.")
    embed_timeout: float = Field(10.0, gt=0, description="Deadline of embedding one text query, in seconds.")
    embedding_model: str = Field(
        "all-minilm-l6-v2", description="Registry name of the embedding model a new collection uses; its champion "
                                        "is what the collection is indexed with (and re-indexed into when it moves).")

    # -- ingestion -------------------------------------------------------------------------------------
    max_document_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest raw document (file bytes) IngestDocuments accepts.")
    max_text_bytes: int = Field(
        300_000, gt=0, description="Largest extracted text (UTF-8 bytes) of one document. The text travels in the "
                                   "documents.ingested event, and its chunks with their vectors in documents.embedded, "
                                   "so it must stay well under the broker's message size limit "
                                   f"({MAX_MESSAGE_BYTES_ENV}).")
    max_documents_per_request: int = Field(100, gt=0, description="Most documents in one IngestDocuments call.")
    reindex_batch: int = Field(
        200, gt=0, description="Documents re-queued for embedding per transaction while a collection is re-indexed "
                               "into a newly promoted embedding model version.")
    reindex_poll_seconds: float = Field(
        2.0, gt=0, description="How often the re-indexer looks for work when nothing woke it.")

    # -- retrieval -------------------------------------------------------------------------------------
    candidates: int = Field(
        50, gt=0, le=1000, description="Depth of each ranking fused by RRF: the vector and the full-text top-N "
                                       "(at least k).")
    hnsw_m: int = Field(16, ge=2, le=100, description="HNSW graph degree (index build parameter `m`).")
    hnsw_ef_construction: int = Field(
        64, ge=4, le=1000, description="HNSW candidate list size while building (`ef_construction`).")
    hnsw_ef_search: int = Field(
        200, ge=1, le=1000, description="HNSW candidate list size while searching (`hnsw.ef_search`): higher = "
                                        "better recall, slower (100,000 chunks of 384 dims: recall@10 0.87 at 40, "
                                        "0.97 at 100, 0.99 at 200 for +12% latency; bench/results/retrieval.md).")
    hnsw_iterative_scan: Literal["off", "relaxed_order", "strict_order"] = Field(
        "relaxed_order", description="pgvector 0.8 iterative index scans (`hnsw.iterative_scan`): when filters drop "
                                     "rows after the HNSW scan, keep scanning until enough rows pass. relaxed_order "
                                     "results are re-sorted by distance.")
    hnsw_max_scan_tuples: int = Field(
        20_000, gt=0, description="Most tuples an iterative scan visits (`hnsw.max_scan_tuples`).")
    exact_search_max_rows: int = Field(
        3_000, ge=0, description="When a query's scope (collection, model version, filters) holds at most this "
                                 "many chunks, rank them exactly (no HNSW): exact recall, and faster than a long "
                                 "iterative scan over a big shared index (the crossover is a few thousand 384-"
                                 "dimensional rows, see bench/results/retrieval.md). 0 = always HNSW.")
    index_build_memory: str = Field(
        "256MB", description="`maintenance_work_mem` while the retriever builds an HNSW index (a build that fits "
                             "in memory is much faster).")

    @model_validator(mode="after")
    def _text_fits_in_an_event(self) -> RetrieverSettings:
        limit = MAX_MESSAGE_BYTES - EVENT_OVERHEAD_BYTES
        if self.max_text_bytes > limit:
            raise ValueError(
                f"max_text_bytes={self.max_text_bytes} does not fit in a documents.ingested event: the outbox "
                f"accepts {MAX_MESSAGE_BYTES} bytes ({MAX_MESSAGE_BYTES_ENV}), minus {EVENT_OVERHEAD_BYTES} for the "
                f"rest of the event; use at most {limit}")
        return self
