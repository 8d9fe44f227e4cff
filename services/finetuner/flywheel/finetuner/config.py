"""Settings of the fine-tuner process (env prefix FLYWHEEL_FINETUNER_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared
from flywheel.finetuner.hyperparams import LoraSettings

DEFAULT_LORA = LoraSettings()


class FinetunerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_FINETUNER_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50054, description="gRPC port (FinetunerService, health, reflection).")
    metrics_port: int = Field(9104, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("finetuner", description="PostgreSQL schema the fine-tuner owns (dataset, runs).")
    consumer_group: str = Field(
        "finetuner", description="Kafka consumer group for reviews.requested, reviews.completed, retrain.requests "
                                 "and predictions.logged.")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    rpc_timeout: float = Field(10.0, description="Deadline of short calls to the registry, in seconds.")
    transfer_timeout: float = Field(
        600.0, description="Deadline of downloading a base model or uploading an adapter, in seconds.")
    work_dir: Path | None = Field(
        None, description="Where base models are unpacked and runs keep their checkpoints; unset = <home>/finetuner.")
    applications: dict[str, str] = Field(
        default_factory=dict,
        description="Application -> the registry model its adapters are versions of, as JSON "
                    "(e.g. {\"support-assistant\": \"smollm2-135m-instruct\"}). Unlisted names resolve to the model "
                    "that answered their reviews, else to the registry model of that name.")
    correction_threshold: int = Field(
        20, ge=0, description="Start a run of an application once this many corrections arrived since its last run's "
                              "snapshot; 0 = only operators and retrain.requests start runs.")
    min_train_examples: int = Field(
        1, ge=1, description="A run with fewer training examples than this fails saying so.")
    lora_rank: int = Field(DEFAULT_LORA.rank, description="LoRA rank r.")
    lora_alpha: float = Field(DEFAULT_LORA.alpha, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(DEFAULT_LORA.dropout, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        list(DEFAULT_LORA.target_modules), description="Names of the linear layers that get adapters (JSON list).")
    epochs: int = Field(DEFAULT_LORA.epochs, description="Passes over the training split.")
    learning_rate: float = Field(DEFAULT_LORA.learning_rate, description="AdamW learning rate (constant).")
    max_length: int = Field(DEFAULT_LORA.max_length, description="Tokens per example (prompt cut from its start).")
    batch_size: int = Field(DEFAULT_LORA.batch_size, description="Examples per optimizer step.")
    seed: int = Field(DEFAULT_LORA.seed, description="Seed of the LoRA init, dropout and batch order.")
    checkpoint_every: int = Field(
        DEFAULT_LORA.checkpoint_every, ge=0,
        description="Checkpoint every this many optimizer steps (and at each epoch end); 0 = epoch ends only.")
    eval_fraction: float = Field(
        DEFAULT_LORA.eval_fraction, description="The latest share of examples (by decision time) held out for "
                                                "the eval loss.")
    student_layers: int = Field(
        DEFAULT_LORA.student_layers, ge=0,
        description="Distillation: how many decoder layers the student keeps; 0 = half of the teacher's.")
    student_keep: str = Field(
        DEFAULT_LORA.student_keep, description="Distillation: which of the teacher's layers the student keeps: ends "
                                               "(a third from the bottom, the rest from the top) or first.")
    teacher_answers_per_application: int = Field(
        2000, ge=0, description="Distillation's data: the newest answers of an application's champion kept from "
                                "predictions.logged (per application); 0 = do not consume predictions.logged.")
    torch_threads: int = Field(1, ge=1, description="CPU threads a run trains with.")
    max_attempts: int = Field(
        3, ge=1, description="A run interrupted (by a restart) this many times fails instead of resuming again.")
    max_concurrent_runs: int = Field(1, ge=1, description="Runs (of different applications) executed at once.")
    retention_days: float = Field(
        30.0, gt=0, description="Answers under review never decided, and decisions whose answer never arrived, are "
                                "forgotten after this many days.")
    code_version: str = Field(
        "", description="Code version recorded in lineage; empty = the git commit, else the package version.")
    poll_interval: float = Field(1.0, gt=0, description="How often the run scheduler looks for queued runs, in s.")

    @field_validator("work_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def lora(self) -> LoraSettings:
        """The default LoRA settings of a run (a run's overrides apply on top)."""
        settings = LoraSettings(
            rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
            target_modules=tuple(self.target_modules), epochs=self.epochs, learning_rate=self.learning_rate,
            max_length=self.max_length, batch_size=self.batch_size, seed=self.seed,
            checkpoint_every=self.checkpoint_every, eval_fraction=self.eval_fraction,
            student_layers=self.student_layers, student_keep=self.student_keep)
        settings.check()
        return settings

    def work_root(self) -> Path:
        return self.work_dir or Path(self.home) / "finetuner"
