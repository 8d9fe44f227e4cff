"""The settings of a LoRA run (what `lora.train_lora` trains with), torch-free so that the service's settings
and the launcher can read them without importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from flywheel.common.errors import InvalidArgument


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
        if problems:
            raise InvalidArgument("bad fine-tuning settings: " + "; ".join(problems))
