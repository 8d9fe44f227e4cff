"""Settings of the inference process (env prefix FLYWHEEL_INFERENCE_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared

if TYPE_CHECKING:
    from flywheel.inference.cache.service import CacheSettings


class Route(BaseModel):
    """How one model's requests are split between its champion and its challenger."""

    mode: Literal["champion", "canary", "shadow"] = "champion"
    # canary: share of requests (sticky by routing key) answered by the challenger.
    canary_share: float = Field(0.1, ge=0.0, le=1.0)


class TokenPrice(BaseModel):
    """What 1,000 tokens cost, for the generation log's cost estimate (in `llm_price_currency`)."""

    prompt: float = Field(0.0, ge=0.0)
    completion: float = Field(0.0, ge=0.0)


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_INFERENCE_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(8001, description="OIP v2 gRPC port (GRPCInferenceService, health, reflection).")
    http_host: str = Field("127.0.0.1", description="Interface the OIP v2 REST server binds.")
    http_port: int = Field(8000, description="OIP v2 REST port.")
    metrics_port: int = Field(8002, description="Prometheus /metrics port; 0 turns it off.")
    models: list[str] = Field(
        default_factory=list, description="Model names served (JSON list); empty = every predictive model that has "
                                          "a champion in the registry, found at start and on each promotion.")
    registry_addr: str = shared("registry_addr", "127.0.0.1:50051", "Address of the registry gRPC server.")  # type: ignore[assignment]
    featurestore_addr: str = shared(  # type: ignore[assignment]
        "featurestore_addr", "127.0.0.1:50052",
        "Address of the feature store gRPC server (online features of requests that carry entity ids).")
    embedder_addr: str = shared(  # type: ignore[assignment]
        "embedder_addr", "127.0.0.1:50055",
        "Embedder gRPC address (FLYWHEEL_EMBEDDER_ADDR): /v1/embeddings and the embedding models of /v1/models go "
        "there; empty = no embeddings on this server.")
    embedder_timeout_s: float = Field(10.0, gt=0, description="Deadline of one call to the embedder.")
    feature_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of one GetOnlineFeatures call (requests that carry entity ids).")
    routing: dict[str, Route] = Field(
        default_factory=dict,
        description='Per model routing (JSON): {"fraud": {"mode": "champion"|"canary"|"shadow", '
                    '"canary_share": 0.1}}; a model not listed is served by its champion only.')
    log_sample_rate: dict[str, float] = Field(
        default_factory=dict, description="Per model share of requests logged to predictions.logged (JSON; "
                                          "default 1.0).")
    log_queue_size: int = Field(10_000, description="Prediction log events buffered before dropping.")
    log_linger_ms: float = Field(
        50.0, ge=0, description="How long prediction log events gather before a produce request (unless 500 are "
                                "waiting): each request costs the event loop a fixed share, whatever it carries.")
    log_max_input_values: int = Field(
        100_000, description="Requests with more input values than this are logged without their inputs.")
    max_batch_size: int = Field(0, description="Adaptive batching: most rows scored at once (0 = off).")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="Adaptive batching: longest wait for more rows; 0 = no clock, a batch takes the "
                               "requests already received (by the next turn of the event loop).")
    inline_max_rows: int = Field(
        64, ge=0, description="Requests (or batches) of at most this many rows are scored on the event loop, "
                              "without a worker thread, when the model is cheap (inline_max_ms); 0 = never.")
    inline_max_ms: float = Field(
        1.0, ge=0, description="A model is cheap when one row scored in at most this long while it was warmed.")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop of `python -m flywheel.inference`: uvloop (libuv; its sockets and "
                              "callbacks cost less per request) or the standard asyncio loop.")
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op threads of each serving process (`python -m`); 0 = torch's default "
                             "(one per core). Small models on few rows run slower with more: waking and joining "
                             "the OpenMP threads costs more than the work (8 rows of the benchmark's MLP: ~0.1-0.6 ms "
                             "with 2 threads, ~45 µs with 1). Use `workers` for the cores.")
    workers: int = Field(
        1, ge=1, description="Serving processes. More than 1: a supervisor runs that many workers sharing the gRPC "
                             "and HTTP ports (SO_REUSEPORT), each with its own model copies, consumer and prediction "
                             "logger; /metrics sums them. Use up to the cores the server may take.")
    db_schema: str = Field("inference", description="PostgreSQL schema (processed events of the consumer).")
    consumer_group: str = Field(
        default_factory=lambda: f"inference-{socket.gethostname()}",
        description="Kafka consumer group for models.promoted; must be unique per replica (every replica "
                    "reacts to every promotion). Default: inference-<hostname>.")
    load_timeout_s: float = Field(120.0, description="Longest time a model download + load may take.")
    allow_anonymous_predict: bool = Field(
        False, description="Calls without a token may predict (role `predict`), so stock OIP clients work unchanged; "
                           "`make run` turns it on for its loopback stack, production manifests leave it off.")

    # -- LLMs (models of kind llm and LoRA adapters; see flywheel/inference/llm) --------------------------
    llm_enabled: bool = Field(True, description="Serve models whose champion is an LLM or a LoRA adapter. Nothing "
                                                "LLM-related is loaded until one is promoted.")
    llm_quantization: dict[str, Literal["none", "int8", "int8-all"]] = Field(
        default_factory=dict, description='Per base LLM (JSON): {"smollm2-135m-instruct": "int8"} serves it int8 '
                                          "dynamically quantized (int8: Linear layers per channel but the output "
                                          "head and MLP down projections; int8-all: every Linear, per tensor); "
                                          "default none (float32). LoRA adapters need a float base.")
    llm_max_batch: int = Field(8, ge=1, description="Most sequences one decode step serves (continuous batching).")
    llm_max_queue: int = Field(64, ge=0, description="Generations waiting for a batch row before new ones are "
                                                     "refused as overloaded.")
    llm_max_tokens: int = Field(1024, ge=1, description="Cap on max_tokens of one generation.")
    llm_max_context: int = Field(2048, ge=16, description="Context (prompt + completion) served, at most the model's: "
                                                          "bounds the KV cache (SmolLM2-135M: 46 KB per token, so "
                                                          "8 rows x 2048 tokens = 0.75 GB at most).")
    llm_prefix_cache_tokens: int = Field(2048, ge=0, description="Prompt tokens whose keys/values are kept for "
                                                                 "prefix reuse (shared system prompts); 0 = off.")
    llm_cache_dir: Path | None = Field(None, description="Where LLM and adapter directories are unpacked "
                                                         "(content-addressed); default <home>/llm/models.")
    llm_max_pinned: int = Field(2, ge=1, description="Versions served pinned at once next to the champions (gRPC "
                                                      "Generate's model_version: the evaluator's candidates); the "
                                                      "least recently used idle one is unloaded for a new one.")
    llm_pinned_idle_seconds: float = Field(300.0, gt=0, description="A pinned version without a request for this "
                                                                    "long is unloaded (never while it answers).")

    # -- applications: prompt templates + a model + a retrieval collection (see flywheel/inference/apps) -------
    retriever_addr: str = shared(  # type: ignore[assignment]
        "retriever_addr", "127.0.0.1:50056",
        "Retriever gRPC address (FLYWHEEL_RETRIEVER_ADDR): applications retrieve their passages there; empty = "
        "applications cannot answer.")
    retriever_timeout_s: float = Field(10.0, gt=0, description="Deadline of one Retrieve call.")
    apps_enabled: bool = Field(True, description="Serve applications (/v1/applications and application names in "
                                                 "/v1/chat/completions and Generate).")
    apps_refresh_s: float = Field(1.0, gt=0, description="How often each replica checks whether the applications "
                                                         "changed (one read of a revision counter).")
    apps_answer_tokens: int = Field(256, ge=1, description="Tokens reserved for an application's answer when neither "
                                                           "the request nor the prompt template sets max_tokens.")
    prompt_max_age_s: float = Field(300.0, gt=0, description="Longest a prompt alias resolution is trusted without a "
                                                             "models.promoted event (promotions arrive as events).")
    guard_addr: str = shared(  # type: ignore[assignment]
        "guard_addr", "127.0.0.1:50059",
        "Guard gRPC address (FLYWHEEL_GUARD_ADDR): applications whose guard_policy names a policy there are checked "
        "(input before retrieval, output before it leaves); empty = no guard, named policies are not applied "
        "(counted in flywheel_inference_guard_unchecked_total).")
    guard_timeout_s: float = Field(0.3, gt=0, description="Deadline of one guard check when the policy sets no "
                                                          "check_timeout_ms (policy look-ups get 4x this).")
    guard_policy_ttl_s: float = Field(5.0, gt=0, description="How long a fetched guard policy is used before it is "
                                                             "asked for again (the guard hot-reloads policies).")
    llm_prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description='Per model or adapter name (JSON), per 1,000 tokens: {"smollm2-135m-'
                                          'instruct": {"prompt": 0.0001, "completion": 0.0004}}; an adapter without '
                                          "its own price takes its base's; others take llm_default_price.")
    llm_default_price: TokenPrice = Field(
        default_factory=lambda: TokenPrice(prompt=0.0001, completion=0.0004),
        description="Price per 1,000 tokens of a model without its own (JSON {prompt, completion}); the default is "
                    "an illustrative figure for a small model on CPU: set your own.")
    llm_price_currency: str = Field("USD", description="Currency of the prices (and of the logged cost).")

    def console_notes(self) -> list[str]:
        """Where the OpenAI-compatible door is (`make run` prints it)."""
        return [f"OpenAI-compatible http://{self.http_host}:{self.http_port}/v1 (models, chat, embeddings; "
                "applications: /v1/applications)"]

    # -- LLM response cache (flywheel/inference/cache) -------------------------------------------------------
    llm_cache_enabled: bool = Field(True, description="Answer repeated chat requests from the response cache (exact "
                                                      "and semantic). Sampled requests (temperature > 0, no seed) "
                                                      "always bypass it.")
    llm_cache_exact_max_entries: int = Field(10_000, ge=0, description="Answers the in-process exact cache (LRU, "
                                                                        "the fast path) holds; 0 = database only.")
    llm_cache_exact_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="About the bytes the in-process "
                                                                                "exact cache holds.")
    llm_cache_semantic_enabled: bool = Field(True, description="Also answer a near-duplicate last user turn "
                                                               "(same fingerprint of everything else) from the "
                                                               "cache; needs the embedder.")
    llm_cache_semantic_threshold: float = Field(0.9, ge=0.0, le=1.0, description="Least cosine similarity of the "
                                                                                 "last user turns for a semantic hit.")
    llm_cache_semantic_same_key_terms: bool = Field(True, description="A semantic hit also needs the same numbers "
                                                                      "and names in both questions ($18 vs $80, Plus "
                                                                      "Debit vs Everyday Debit).")
    llm_cache_ttl_s: float = Field(86_400.0, gt=0, description="How long a cached answer is served.")
    llm_cache_embedding_model: str = Field("", description="Embedding model (registry name) of the semantic "
                                                           "cache; empty = the embedder's default.")
    llm_cache_lookup_timeout_s: float = Field(1.0, gt=0, description="Longest a lookup (database, embedder) may "
                                                                     "take before the request is generated anyway.")
    llm_cache_max_rows: int = Field(200_000, ge=0, description="Rows the shared cache table keeps (oldest out "
                                                               "first, by the purge every minute); 0 = no bound.")

    def llm_response_cache(self) -> CacheSettings:
        from flywheel.inference.cache.service import CacheSettings

        return CacheSettings(
            enabled=self.llm_cache_enabled, exact_max_entries=self.llm_cache_exact_max_entries,
            exact_max_bytes=self.llm_cache_exact_max_bytes, semantic_enabled=self.llm_cache_semantic_enabled,
            semantic_threshold=self.llm_cache_semantic_threshold,
            semantic_same_key_terms=self.llm_cache_semantic_same_key_terms, ttl_s=self.llm_cache_ttl_s,
            embedding_model=self.llm_cache_embedding_model, lookup_timeout_s=self.llm_cache_lookup_timeout_s,
            max_rows=self.llm_cache_max_rows)
    # -- end of the LLM response cache settings ----------------------------------------------------------------

    def llm_models_dir(self) -> Path:
        return self.llm_cache_dir or Path(self.home) / "llm" / "models"

    def route(self, model: str) -> Route:
        return self.routing.get(model) or Route()

    def sample_rate(self, model: str) -> float:
        return float(self.log_sample_rate.get(model, 1.0))
