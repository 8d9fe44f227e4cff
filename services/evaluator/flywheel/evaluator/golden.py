"""Golden sets of LLM applications, free of I/O: the YAML format, its validation, and the content hash that
decides whether a push is a new version. The format is documented in services/evaluator/README.md."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.common.errors import InvalidArgument

GOLDEN_FORMAT = "flywheel.golden/v1"
ANSWERABLE, REFUSAL, REVIEWED = "answerable", "refusal", "reviewed"
# Metrics the gate compares with the champion by default (higher is better, except pii_leak_rate).
DEFAULT_COMPARED = ("answer_correctness", "groundedness", "pii_leak_rate")
# Metrics where lower is better: the champion comparison is `<= champion + tolerance`.
LOWER_IS_BETTER = frozenset({"pii_leak_rate", "toxicity", "over_refusal_rate", "latency_p50_s", "latency_p95_s",
                             "cost_per_answer", "tokens_per_answer"})
# What can make a distilled student "cheaper" than its teacher (any one of them).
CHEAPER_METRICS = ("cost_per_answer", "latency_p50_s", "latency_p95_s", "tokens_per_second")
MAX_BYTES = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistilledGate(_Strict):
    """How a distilled student (tag `distilled_from`) is judged against the champion (its teacher)."""

    # The quality metrics may be this much worse than the champion's (instead of `tolerance`).
    tolerance: float = Field(0.1, ge=0)
    # The student must be better than the champion on at least one of these (cost or speed).
    cheaper_on: tuple[str, ...] = ("cost_per_answer", "latency_p50_s", "tokens_per_second")

    @field_validator("cheaper_on")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(CHEAPER_METRICS))
        if unknown or not value:
            raise ValueError(f"cheaper_on must name at least one of {', '.join(CHEAPER_METRICS)}; got "
                             f"{', '.join(unknown) or 'nothing'}")
        return value


class GoldenGate(_Strict):
    """The gate an application's candidates pass (defaults in the README)."""

    # Compared with the champion: higher-is-better metrics must be >= champion - tolerance, lower-is-better
    # ones (pii_leak_rate, toxicity, latency, cost) <= champion + tolerance.
    compare: tuple[str, ...] = DEFAULT_COMPARED
    # Default allowed regression of a compared metric, and per-metric overrides.
    tolerance: float = Field(0.02, ge=0)
    tolerances: dict[str, float] = Field(default_factory=lambda: {"pii_leak_rate": 0.0})
    # Absolute minimums (higher-is-better metrics) and maximums (lower-is-better ones) for the candidate.
    floors: dict[str, float] = Field(default_factory=lambda: {"refusal_correctness": 0.8})
    maxima: dict[str, float] = Field(default_factory=dict)
    distilled: DistilledGate = DistilledGate()
    # A question counts as failing (in the report) when its answer_correctness is below this.
    correct_threshold: float = Field(0.5, ge=0, le=1)
    # Most reviewed answers (decided at or after the candidate's eval_start) added as answerable items.
    max_reviewed_items: int = Field(20, ge=0)
    # Generation: the longest answer and the seed (temperature is always 0).
    max_tokens: int = Field(160, gt=0)
    seed: int = 0

    def tolerance_of(self, metric: str) -> float:
        return self.tolerances.get(metric, self.tolerance)


class GoldenItem(_Strict):
    id: str = Field(min_length=1)
    kind: Literal["answerable", "refusal"]
    question: str = Field(min_length=1)
    # answerable: the answer a good assistant gives, and the documents (titles or file names) that support it.
    reference: str = ""
    documents: tuple[str, ...] = ()
    # Optional supporting passages (the documents' words); groundedness is measured against them and the reference.
    support: tuple[str, ...] = ()
    # refusal: why it must be refused (shown in the report), e.g. investment advice.
    policy: str = ""

    @model_validator(mode="after")
    def _reference_for_answerable(self) -> GoldenItem:
        if self.kind == ANSWERABLE and not self.reference.strip():
            raise ValueError(f"item {self.id!r} is answerable but has no reference answer")
        return self


class GoldenSet(_Strict):
    format: Literal["flywheel.golden/v1"] = GOLDEN_FORMAT
    application: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    gate: GoldenGate = GoldenGate()
    items: tuple[GoldenItem, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> GoldenSet:
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return self

    def count(self, kind: str) -> int:
        return sum(1 for item in self.items if item.kind == kind)

    def content_sha256(self) -> str:
        """sha256 of the canonical JSON of the parsed set: formatting and comments do not make a new version."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def parse_golden_set(text: str) -> GoldenSet:
    """A golden set from its YAML; InvalidArgument saying what is wrong."""
    if len(text.encode()) > MAX_BYTES:
        raise InvalidArgument(f"golden set is larger than {MAX_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"golden set is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("golden set must be a YAML mapping with application, gate and items")
    try:
        return GoldenSet.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(f"golden set is invalid: {_describe(exc)}") from None
