"""Settings of the monitor process (env prefix FLYWHEEL_MONITOR_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import ServiceSettings, shared


class ReviewPolicy(BaseModel):
    """Which predictions go to human review as low-confidence samples."""

    band: float = Field(0.1, ge=0, le=1, description="Sample predictions with |p - threshold| <= band.")
    rate: float = Field(0.05, ge=0, le=1, description="Share of in-band predictions sampled (by request id hash).")
    max_per_window: int = Field(20, ge=0, description="At most this many low-confidence reviews per window.")


class LlmBaseline(BaseModel):
    """A configured reference of an LLM application's online scores (instead of its first windows)."""

    groundedness: float | None = Field(None, ge=0, le=1, description="Mean groundedness of its answers.")
    refusal_rate: float = Field(0.0, ge=0, le=1, description="Share of refusals.")
    pii_leak_rate: float = Field(0.0, ge=0, le=1, description="Share of answers showing PII.")
    negative_feedback_rate: float = Field(0.0, ge=0, le=1, description="Share of answers with negative feedback.")


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_MONITOR_", extra="ignore", populate_by_name=True)

    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in containers).")
    grpc_port: int = Field(50058, description="gRPC port (MonitorService, health, reflection).")
    metrics_port: int = Field(9108, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("monitor", description="PostgreSQL schema the monitor owns.")
    consumer_group: str = Field("monitor", description="Kafka consumer group (the faust app id).")
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051", "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR).")
    rpc_timeout: float = Field(10.0, description="Deadline of short calls to the registry, in seconds.")
    download_timeout: float = Field(120.0, description="Deadline of downloading one artifact, in seconds.")

    # Ingest (faust).
    batch_size: int = Field(1000, gt=0, description="Events per ingest transaction (at most).")
    batch_within: float = Field(0.2, gt=0, description="Seconds to wait for a batch to fill before flushing.")
    broker_session_timeout: float = Field(
        3.0, gt=0, description="Consumer session timeout (s); short, so a restarted worker rejoins in seconds.")
    broker_rebalance_timeout: float = Field(
        3.0, gt=0, description="Rebalance timeout (s); faust's default makes a worker wait ~30 s on Tansu.")

    # Windows.
    window_mode: Literal["count", "time"] = Field(
        "count", description="count: each window is the next `window_size` rows of a version in arrival order; "
                             "time: one window per `window_seconds` of prediction time.")
    window_size: int = Field(500, gt=0, description="Rows per window (count mode).")
    window_seconds: float = Field(3600.0, gt=0, description="Window length in prediction time (time mode).")
    window_grace_seconds: float = Field(
        60.0, ge=0, description="Time mode: a window closes this long after its end (or when a later one starts).")
    min_window_rows: int = Field(30, gt=0, description="Time mode: smaller windows are analyzed without drift tests.")

    # Drift and decisions.
    drift_share: float = Field(0.5, gt=0, le=1, description="A window drifted when this share of features drifted.")
    num_method: str = Field(
        "psi", description="Evidently drift method for numeric features and the prediction ('' = Evidently's "
                           "default, Wasserstein, which is noisy on windows of a few hundred rows).")
    cat_method: str = Field("", description="Evidently drift method for categorical features ('' = default).")
    num_threshold: float | None = Field(
        0.2, description="Threshold of the numeric method (None = Evidently's). PSI: 0.1 is Evidently's, but "
                         "same-distribution windows of 200 rows score 0.07 at the median and 0.18 at the 99th "
                         "percentile (above 0.2 in ~0.5% of windows per feature); 0.2+ is mostly a real shift.")
    cat_threshold: float | None = Field(None, description="Threshold of the categorical method (None = default).")
    performance_tolerance: float = Field(
        0.05, ge=0, description="A window drifted when the measured metric falls more than this below training...")
    performance_z: float = Field(
        3.0, ge=0, description="...and the fall is more than this many sampling standard errors of the window's "
                               "metric (ROC AUC: Hanley & McNeil), so label noise in small windows is not drift.")
    performance_metric: Literal["roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall"] = Field(
        "roc_auc", description="The measured metric compared with the version's training metric.")
    min_class_labels: int = Field(
        20, gt=0, description="Judge performance only when the window's labels hold this many of each class.")
    hysteresis_n: int = Field(2, gt=0, description="Alert when >= N of the last M analyzed windows drifted.")
    hysteresis_m: int = Field(3, gt=0, description="See hysteresis_n.")
    cooldown_seconds: float = Field(3600.0, ge=0, description="No new alert for a version this long after one.")
    retrain_min_labels: int = Field(
        2000, ge=0, description="Emit the retrain request once this many labels joined rows since the onset (a "
                                "rare label needs about this many rows for train, validation and test slices "
                                "that each hold enough positives; the payments demo, one run each, at ~7% fraud: "
                                "retrained on 1000 rows, F1 0.28 on drifted traffic; on 2000 rows, 0.36)...")
    retrain_max_wait_seconds: float = Field(3600.0, ge=0, description="...or this long after the alert.")
    analysis_poll_seconds: float = Field(0.5, gt=0, description="How often the analysis worker looks for windows.")

    # Labels.
    positive_label_texts: list[str] = Field(
        default_factory=lambda: ["true", "1", "yes", "positive"],
        description="Text labels (JSON list, case-insensitive) that mean the positive class, e.g. a project's "
                    '["fraud"]; flags and numbers (>= 0.5) need no mapping.')
    negative_label_texts: list[str] = Field(
        default_factory=lambda: ["false", "0", "no", "negative"],
        description="Text labels that mean the negative class, e.g. a project's [\"legit\"].")

    # Reviews.
    review_policy: dict[str, ReviewPolicy] = Field(
        default_factory=lambda: {"*": ReviewPolicy()},
        description="JSON: model name (or '*' = default) -> {band, rate, max_per_window}.")

    # Online scoring of LLM answers (llm.py; predictions.logged events with `llm` set).
    llm_scoring: bool = Field(True, description="Score live LLM answers per application (online scoring).")
    llm_sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of generations scored, by a hash of the request id (a replay samples "
                                     "the same ones). 1.0 suits the demo's volume; lower it for heavy traffic.")
    llm_window_size: int = Field(100, gt=0, description="Scored generations per window of an application.")
    llm_window_seconds: float = Field(
        3600.0, ge=0, description="A window older than this closes with what it has (at least "
                                  "llm_min_window_generations); 0 = windows close by count only.")
    llm_min_window_generations: int = Field(20, gt=0, description="A window closed by age needs this many.")
    llm_reference_windows: int = Field(
        1, gt=0, description="The first N full windows after a champion change are the reference.")
    llm_baseline: dict[str, LlmBaseline] = Field(
        default_factory=dict, description="JSON: application -> configured reference scores (skips the "
                                          "reference windows).")
    llm_groundedness_drop: float = Field(0.15, ge=0, le=1, description="Alert when mean groundedness drops more.")
    llm_refusal_rise: float = Field(0.15, ge=0, le=1, description="Alert when the refusal rate rises more.")
    llm_pii_leak_rate: float = Field(0.02, ge=0, le=1, description="Alert when the PII leak rate is above.")
    llm_negative_feedback_rate: float = Field(
        0.2, ge=0, le=1, description="Alert when the share of answers with negative feedback is above.")
    llm_min_scored: int = Field(
        10, gt=0, description="Judge groundedness only with this many scored answers in window and reference.")
    llm_cooldown_seconds: float = Field(3600.0, ge=0, description="No new alert for an application this long.")
    llm_review_samples: int = Field(5, ge=0, description="Lowest-scoring answers of an alerting window to review.")
    llm_retrain_kind: Literal["lora_adapter", "llm"] = Field(
        "lora_adapter", description="ModelKind of the retrain request (the fine-tuner takes both).")
    llm_feedback_sources: list[str] = Field(
        default_factory=lambda: ["END_USER", "REVIEWER"],
        description="FeedbackSource names whose feedback counts for the negative feedback rate.")
    llm_negative_feedback_texts: list[str] = Field(
        default_factory=lambda: ["thumbs_down", "down", "bad", "negative", "unhelpful", "wrong", "rejected",
                                 "corrected", "no", "false"],
        description="Text labels of feedback on an answer that mean negative (the review app: rejected, corrected).")
    llm_positive_feedback_texts: list[str] = Field(
        default_factory=lambda: ["thumbs_up", "up", "good", "positive", "helpful", "approved", "yes", "true"],
        description="Text labels of feedback on an answer that mean positive.")

    # Retention.
    observation_ttl_seconds: float = Field(7 * 86400.0, gt=0, description="Observations older than this are deleted.")
    label_ttl_seconds: float = Field(86400.0, gt=0, description="Labels waiting for their prediction expire after.")

    def review_policy_for(self, model_name: str) -> ReviewPolicy:
        return self.review_policy.get(model_name) or self.review_policy.get("*") or ReviewPolicy()
