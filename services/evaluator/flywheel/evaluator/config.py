"""Settings of the evaluator process (env prefix FLYWHEEL_EVALUATOR_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared


class EvaluatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_EVALUATOR_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50057, description="gRPC port (EvaluatorService, health, reflection).")
    metrics_port: int = Field(9107, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("evaluator", description="PostgreSQL schema the evaluator owns (labels, evaluations).")
    consumer_group: str = Field(
        "evaluator", description="Kafka consumer group for models.registered and feedback.received.")
    specs_dir: Path | None = Field(
        None, description="Directory of model specs (<name>.yaml, the trainer's format, with the gate); unset = "
                          "none (nothing is evaluated). `make run` sets it from the installed projects' settings.")
    featurestore_addr: str = shared(  # type: ignore[assignment]
        "featurestore_addr", "127.0.0.1:50052", "Feature store gRPC address (FLYWHEEL_FEATURESTORE_ADDR).")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    rpc_timeout: float = Field(10.0, description="Deadline of short calls to other services, in seconds.")
    download_timeout: float = Field(120.0, description="Deadline of downloading one artifact, in seconds.")
    feature_timeout: float = Field(300.0, description="Deadline of one GetHistoricalFeatures call, in seconds.")
    feature_request_rows: int = Field(
        100, description="Entity rows per GetHistoricalFeatures call (the point-in-time join grows faster than "
                         "linearly with the rows of one call).")
    max_rows: int = Field(5000, gt=0, description="Evaluate on at most this many of the most recent labelled rows.")
    min_rows: int = Field(200, gt=0, description="Fewer labelled rows than this: wait for more, then ERROR.")
    min_positives: int = Field(5, gt=0, description="Fewer positive labels than this: wait for more, then ERROR.")
    max_wait_seconds: float = Field(
        300.0, ge=0, description="How long an automatic evaluation waits for enough labels before ERROR.")
    label_poll_seconds: float = Field(10.0, gt=0, description="How often a waiting evaluation looks for labels.")
    lookback_seconds: float = Field(
        7 * 86400.0, gt=0, description="Without the candidate's holdout_start tag: evaluate on labels with event "
                                       "time in the last this-many seconds before the newest label.")
    min_slice_rows: int = Field(50, gt=0, description="Smallest slice (feature = value) that gets its own metrics.")
    poll_interval: float = Field(1.0, gt=0, description="How often the worker looks for queued evaluations.")
    torch_threads: int = Field(1, gt=0, description="CPU threads used to score.")
    # -- the LLM gate -----------------------------------------------------------------------------
    llm: bool = Field(True, description="Evaluate LLM versions (adapters, LLMs, distilled students, prompt templates) "
                                        "tagged with an application that has a golden set.")
    golden_dir: Path | None = Field(
        None, description="Directory of golden sets (*.yaml) pushed on start (a new version only when one's content "
                          "changed); unset = none. `make run` sets it from the installed projects' settings.")
    inference_addr: str = shared(  # type: ignore[assignment]
        "inference_addr", "127.0.0.1:8001", "Inference gRPC address (FLYWHEEL_INFERENCE_ADDR): answers the questions.")
    embedder_addr: str = shared(  # type: ignore[assignment]
        "embedder_addr", "127.0.0.1:50055", "Embedder gRPC address (FLYWHEEL_EMBEDDER_ADDR): semantic similarity.")
    guard_addr: str = shared(  # type: ignore[assignment]
        "guard_addr", "127.0.0.1:50059", "Guard gRPC address (FLYWHEEL_GUARD_ADDR): toxicity of answers.")
    semantic_similarity: bool = Field(
        True, description="Score answer correctness by embedding similarity too (through the embedder); off or "
                          "embedder down = token F1 only (the report says which).")
    toxicity: bool = Field(True, description="Score answers' toxicity with the guard's output check; off or guard "
                                             "down = omitted (the report says so).")
    generation_timeout: float = Field(300.0, gt=0, description="Deadline of one pinned generation (loading the "
                                                               "pinned version on demand included), in seconds.")
    llm_concurrency: int = Field(2, gt=0, description="Questions in flight at once per evaluation arm.")
    price_per_1k_prompt_tokens: float = Field(
        0.0005, ge=0, description="Cost of 1,000 prompt tokens (cost_per_answer; e.g. the serving cost of the CPU).")
    price_per_1k_completion_tokens: float = Field(0.0015, ge=0, description="Cost of 1,000 completion tokens.")

    @field_validator("specs_dir", "golden_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value
