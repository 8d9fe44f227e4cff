"""Starting the fine-tuner in a test and feeding it: settings for a tiny LLM (runs of a few hundred
milliseconds), reviewed answers as the review path sends them (reviews.requested with the exchange, then
reviews.completed with the decision), and a tiny base model registered and promoted in the session registry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel.common.events import Event
from flywheel.common.model_building import model_building
from flywheel.common.model_dirs import pack_dir
from flywheel.common.topics import REVIEWS_COMPLETED, REVIEWS_REQUESTED
from flywheel.finetuner.config import FinetunerSettings
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests.integration import registry_client
from tests.service_helpers import shared_settings

SYSTEM = "Answer from the bank's policies."
# LoRA settings that make the tiny model learn a few answers in well under a second.
TINY_LORA: dict[str, Any] = dict(
    lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, learning_rate=1e-2, epochs=6, batch_size=4, max_length=128,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    checkpoint_every=4, eval_fraction=0.25)


def finetuner_settings(infra: Any, registry_addr: str, work_dir: Path, **overrides: Any) -> FinetunerSettings:
    """The fine-tuner on the session's stack: its own schema and consumer group, a free port."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        **shared_settings(infra), db_schema=f"finetuner_{suffix}", consumer_group=f"finetuner-{suffix}",
        registry_addr=registry_addr, work_dir=work_dir, poll_interval=0.2, correction_threshold=0, **TINY_LORA)
    values.update(overrides)
    return FinetunerSettings(**values)


def settings_env(settings: FinetunerSettings) -> dict[str, str]:
    """The FLYWHEEL_* environment that makes `python -m flywheel.finetuner` read the same settings."""
    import json

    env = {"FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "FLYWHEEL_DATABASE_URL": settings.database_url, "FLYWHEEL_TOKEN": settings.token,
           "FLYWHEEL_REGISTRY_ADDR": settings.registry_addr, "FLYWHEEL_LOG_JSON": "true"}
    for name in ("grpc_port", "metrics_port", "db_schema", "consumer_group", "work_dir", "poll_interval",
                 "correction_threshold", "lora_rank", "lora_alpha", "lora_dropout", "learning_rate", "epochs",
                 "batch_size", "max_length", "target_modules", "checkpoint_every", "eval_fraction"):
        value = getattr(settings, name)
        env[f"FLYWHEEL_FINETUNER_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


def reviewed(application: str, question: str, answer: str, *, decision: int = reviews_pb2.REVIEW_DECISION_CORRECTED,
             corrected: str = "", model: str = "", model_version: int = 1, review_id: str = "",
             decided_at: datetime | None = None) -> tuple[Event, Event]:
    """reviews.requested (an answer of `application`, by `model`) and reviews.completed (the decision)."""
    review_id = review_id or str(uuid.uuid4())
    request_id = f"req-{review_id}"
    requested = reviews_pb2.ReviewRequested(
        review_id=review_id, request_id=request_id,
        model=common_pb2.ModelRef(name=model or application, version=model_version),
        reason=reviews_pb2.REVIEW_REASON_DISPUTED, priority=1,
        llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="system", content=SYSTEM),
                      predictions_pb2.ChatMessage(role="user", content=question)],
            prompt="(rendered)", completion=answer, finish_reason="stop", application=application))
    requested.requested_at.FromDatetime(datetime.now(UTC))
    completed = reviews_pb2.ReviewCompleted(
        review_id=review_id, request_id=request_id, model=requested.model, reviewer="reviewer",
        decision=decision, corrected_completion=corrected)  # type: ignore[arg-type]
    completed.completed_at.FromDatetime(decided_at or datetime.now(UTC))
    return (Event(REVIEWS_REQUESTED, request_id, requested, "tests"),
            Event(REVIEWS_COMPLETED, request_id, completed, "tests"))


def corrections(application: str, questions: list[str], wrong: str, right: str, *, model: str = "",
                start: datetime | None = None) -> list[Event]:
    """Each question answered `wrong` and corrected to `right`, decided one minute apart (in list order)."""
    start = start or datetime.now(UTC) - timedelta(hours=1)
    events: list[Event] = []
    for i, question in enumerate(questions):
        events += reviewed(application, question, wrong, corrected=right, model=model,
                           decided_at=start + timedelta(minutes=i))
    return events


def build_tiny_chat_llm(directory: Path, *, seed: int = 3) -> Path:
    """The inference tests' tiny LLM (`flywheel.inference.testing.build_tiny_llm`), with a seeded random embedding
    for its end-of-turn token. That token is also its pad token, so transformers initializes its embedding row
    to zeros and, the head being tied to the embeddings, its logit is always 0: the model could never learn to
    end an answer. A real chat model's end-of-turn embedding is trained; this gives the tiny one a usable one."""
    import torch
    from transformers import AutoModelForCausalLM

    from flywheel.inference.testing import build_tiny_llm

    path = build_tiny_llm(directory, seed=seed)
    with model_building():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    embeddings = model.get_input_embeddings().weight
    end = model.config.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embeddings[end] = torch.randn(embeddings.shape[1], generator=generator) * embeddings.std()
    model.save_pretrained(path)
    return path


async def register_tiny_base(registry: Any, name: str, directory: Path) -> rpb.ModelVersion:
    """Register the tiny model directory as a version of `name` (kind llm) and make it the champion."""
    version = await registry_client.register(registry, name, pack_dir(directory), kind=common_pb2.MODEL_KIND_LLM,
                                             framework="transformers")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=name, alias="champion", version=version.version))
    return version
