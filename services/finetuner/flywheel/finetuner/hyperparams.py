"""What a LoRA run takes and gives, torch-free: its settings, its examples, its progress reports, its result
and where its checkpoints are. The service's settings, the launcher and the scheduler read these without
importing torch; `lora.py` (torch, transformers, PEFT) is imported by the training thread only."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flywheel.common.errors import InvalidArgument

STEP_PREFIX = "step-"
STATE_FILE = "state.json"
# Run modes: a LoRA adapter of the champion's base learned from reviewers' corrections, or a smaller student
# LLM distilled from the champion's logged answers (and those corrections).
LORA, DISTILL = "lora", "distill"
MODES = (LORA, DISTILL)
STUDENT_KEEP = ("ends", "first")


@dataclass(frozen=True)
class LoraSettings:
    """What a run trains with; every field can be overridden per run (StartRun settings, retrain request
    parameters) by its name."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    epochs: int = 3
    learning_rate: float = 2e-4
    max_length: int = 512
    batch_size: int = 4
    seed: int = 0
    # Save a checkpoint every this many optimizer steps (and at every epoch end); 0 = epoch ends only.
    checkpoint_every: int = 50
    # The latest share of examples (by decision time) held out for evaluation.
    eval_fraction: float = 0.2
    # lora (an adapter from the reviewed answers) or distill (a smaller student from the champion's answers).
    mode: str = LORA
    # Distillation: how many of the teacher's decoder layers the student keeps (0 = half of them), and which:
    # `ends` (the first third of them from the bottom of the teacher, the rest from its top) or `first` (the
    # first N).
    student_layers: int = 0
    student_keep: str = "ends"

    def to_strings(self) -> dict[str, str]:
        return {f.name: ",".join(v) if isinstance(v := getattr(self, f.name), tuple) else str(v)
                for f in fields(self)}

    def with_overrides(self, overrides: Mapping[str, str]) -> LoraSettings:
        """These settings with `overrides` (name -> text) applied; InvalidArgument naming a bad key or value."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, text in overrides.items():
            if key not in known:
                raise InvalidArgument(f"unknown fine-tuning setting {key!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, key)
            try:
                if isinstance(current, tuple):
                    value: Any = tuple(m.strip() for m in str(text).split(",") if m.strip())
                elif isinstance(current, str):
                    value = str(text).strip().lower()
                elif isinstance(current, bool):
                    value = str(text).lower() in ("1", "true", "yes")
                elif isinstance(current, int):
                    value = int(text)
                else:
                    value = float(text)
            except ValueError:
                raise InvalidArgument(f"setting {key}={text!r} is not a {type(current).__name__}") from None
            changes[key] = value
        settings = replace(self, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            problems.append("target_modules is empty: name the layers to adapt (e.g. q_proj,v_proj)")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.max_length < 8:
            problems.append(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.checkpoint_every < 0:
            problems.append(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 <= self.eval_fraction < 1:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.student_keep not in STUDENT_KEEP:
            problems.append(f"student_keep must be one of {', '.join(STUDENT_KEEP)}, got {self.student_keep!r}")
        if self.student_layers < 0:
            problems.append(f"student_layers must be >= 0 (0 = half of the teacher's), got {self.student_layers}")
        if problems:
            raise InvalidArgument("bad fine-tuning settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Example:
    """One instruction: the conversation up to the assistant's turn (or, without it, the rendered prompt
    the model saw) and the answer to learn."""

    messages: tuple[tuple[str, str], ...]
    prompt: str
    target: str


@dataclass
class StepReport:
    """What the training loop tells its caller after each optimizer step (and at checkpoints)."""

    step: int
    total_steps: int
    epoch: int
    epochs: int
    train_loss: float
    checkpoint_step: int = 0
    epoch_metrics: dict[str, float] | None = None


Progress = Callable[[StepReport], None]


@dataclass
class TrainingResult:
    adapter_dir: Path
    epochs: list[dict[str, float]]
    train_loss: float
    eval_loss: float | None
    eval_loss_base: float | None
    steps: int
    resumed_from_step: int
    train_examples: int
    eval_examples: int
    truncated: int
    seconds: float
    # Metrics of the run's mode (a distilled student's: the teacher's eval loss, parameter counts, layers).
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {"train_loss": self.train_loss, "steps": float(self.steps),
               "train_examples": float(self.train_examples), "eval_examples": float(self.eval_examples),
               "truncated_examples": float(self.truncated), "train_seconds": self.seconds}
        if self.eval_loss is not None and self.eval_loss_base is not None:
            out |= {"eval_loss": self.eval_loss, "eval_loss_base": self.eval_loss_base,
                    "perplexity_before": _exp(self.eval_loss_base), "perplexity_after": _exp(self.eval_loss)}
        return out | self.extra


def _exp(loss: float) -> float:
    return math.exp(min(loss, 80.0))


def latest_checkpoint(root: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint under `root` made for `fingerprint`, or None."""
    if not root.is_dir():
        return None
    found = []
    for path in root.iterdir():
        if not path.name.startswith(STEP_PREFIX) or not (path / STATE_FILE).is_file():
            continue
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint:
            found.append((int(state["step"]), path))
    return max(found)[1] if found else None


def student_layer_count(teacher_layers: int, requested: int) -> int:
    """The student's layers: `requested`, or half of the teacher's (at least 1); InvalidArgument when that is not
    fewer than the teacher's."""
    layers = requested or max(1, teacher_layers // 2)
    if layers >= teacher_layers:
        raise InvalidArgument(f"student_layers={layers} is not fewer than the teacher's {teacher_layers} decoder "
                              f"layers: give 1..{teacher_layers - 1}")
    return layers


def kept_layers(teacher_layers: int, layers: int, keep: str = "ends") -> list[int]:
    """Which of the teacher's decoder layers the student keeps, in order. `first`: the first `layers`. `ends`:
    the first third of them from the bottom of the teacher and the rest from its top (measured on
    SmolLM2-135M cut to 15 of 30 layers, the answer loss before any training is ~6 with 5 + 10 against ~20
    with the first 15: the top layers turn the residual stream into next-token logits, the middle ones are
    the most redundant)."""
    if keep == "first":
        return list(range(layers))
    bottom = -(-layers // 3)
    return list(range(bottom)) + list(range(teacher_layers - (layers - bottom), teacher_layers))
