"""Online scores of live LLM answers: one generation's groundedness, refusal and PII leak, what a piece of
feedback says about an answer, a window's aggregate, and the quality decision against a reference.

Pure functions (no database, no Kafka), shared by the ingest (`online.py`) and the tests.

- Groundedness: `flywheel.common.grounding.groundedness(completion, [prompt])`. The logged exchange carries the
  ids of the chunks put into the prompt, not their texts, but `prompt` is the rendered prompt the model saw, with
  the retrieved passages in it, so the prompt is the source. It also holds the system turn and the question, so
  an answer that only restates the question reads as grounded: the score is an upper bound, good for trends.
  Both texts are redacted at the storage floor (placeholders in both), which changes no claim's support.
- Refusal: the guard blocked (`finish_reason` content_filter / guard), the application answered with its
  template's refusal (`finish_reason` refusal, or no chunk in the prompt and refusal phrasing), or refusal
  phrasing in the answer. Refusals get no groundedness (they make no claim to support).
- PII leak: PII still in the logged completion (`flywheel.common.pii.find_pii`), or a placeholder of
  `flywheel.common.redaction` in it: the log is redacted before it leaves inference, so a placeholder in the
  completion is the evidence that the model emitted PII of that kind (its own or an echo of the user's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flywheel.common import pii
from flywheel.common.grounding import groundedness

GUARD_FINISH = frozenset({"content_filter", "guard", "blocked"})
REFUSAL_FINISH = frozenset({"refusal"})
PLACEHOLDERS = {placeholder: kind for kind, placeholder in pii.REPLACEMENTS.items()}
PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
REFUSAL_PHRASES = re.compile(
    r"\bi(?:\s+can(?:no|')t|\s+cannot|(?:'m|\s+am)\s+(?:not\s+able|unable)\s+to|\s+won't|\s+will\s+not)\s+"
    r"(?:help|answer|assist|provide|find|share|give|do\s+that|discuss)\b|"
    r"\bi(?:'m|\s+am)\s+sorry,?\s+but\s+i\b|"
    r"\bi\s+(?:must|have\s+to)\s+(?:decline|refuse)\b|"
    r"\b(?:that|this)\s+is\s+(?:not\s+something|outside\s+what)\s+i\s+can\b",
    re.IGNORECASE)
FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?=\s)|$)", re.DOTALL)
# The metrics of a window, in display order; `higher_is_worse` for the decision.
METRICS = ("groundedness", "refusal_rate", "pii_leak_rate", "negative_feedback_rate")


@dataclass(frozen=True)
class GenerationScore:
    """The scores of one logged answer."""

    groundedness: float | None
    refused: bool
    pii_kinds: tuple[str, ...]

    @property
    def pii_leak(self) -> bool:
        return bool(self.pii_kinds)


def is_refusal(completion: str, finish_reason: str, context_chunks: int) -> bool:
    """Whether an answer is a refusal (see the module docstring)."""
    reason = finish_reason.strip().lower()
    if reason in GUARD_FINISH or reason in REFUSAL_FINISH:
        return True
    text = completion.strip()
    # With passages in the prompt, only an answer whose first sentence refuses is a refusal ("...; I can't share
    # your PIN" later in a grounded answer does not); without any, refusal phrasing anywhere does.
    if context_chunks:
        match = FIRST_SENTENCE.match(text)
        text = match.group() if match else text
    return bool(REFUSAL_PHRASES.search(text))


def pii_kinds(completion: str) -> tuple[str, ...]:
    """Kinds of PII the completion shows: found in it, or replaced by a redaction placeholder."""
    kinds = {span.kind for span in pii.find_pii(completion)}
    kinds |= {PLACEHOLDERS[m.group()] for m in PLACEHOLDER.finditer(completion)}
    return tuple(sorted(kinds))


def score_generation(completion: str, prompt: str, finish_reason: str, context_chunks: int = 0,
                     ) -> GenerationScore:
    """Score one logged answer. Groundedness only for answers that are not refusals and have a prompt."""
    refused = is_refusal(completion, finish_reason, context_chunks)
    grounded = None
    if not refused and prompt.strip() and completion.strip():
        grounded = groundedness(PLACEHOLDER.sub(" ", completion), [PLACEHOLDER.sub(" ", prompt)])
    return GenerationScore(grounded, refused, pii_kinds(completion))


def feedback_negative(*, flag: bool | None = None, number: float | None = None, text: str | None = None,
                      corrected: str = "", negative_texts: Iterable[str] = (), positive_texts: Iterable[str] = (),
                      ) -> bool | None:
    """What a piece of feedback on an answer says: True = negative (thumbs down, a flag of false, a rating
    below 0.5, a correction or rejection), False = positive, None = nothing about the answer's quality."""
    if corrected.strip():
        return True
    if flag is not None:
        return not flag
    if number is not None and math.isfinite(number):
        return number < 0.5
    if text is not None:
        t = text.strip().lower()
        if t in {x.lower() for x in negative_texts}:
            return True
        if t in {x.lower() for x in positive_texts}:
            return False
    return None


@dataclass(frozen=True)
class WindowScores:
    """The aggregate of one window of scored generations."""

    generations: int
    scored: int  # generations with a groundedness score
    groundedness: float | None
    refusal_rate: float
    pii_leak_rate: float
    negative_feedback_rate: float
    feedback: int  # generations with feedback that said something

    def as_dict(self) -> dict[str, float]:
        out = {"generations": float(self.generations), "scored": float(self.scored),
               "refusal_rate": self.refusal_rate, "pii_leak_rate": self.pii_leak_rate,
               "negative_feedback_rate": self.negative_feedback_rate, "feedback": float(self.feedback)}
        if self.groundedness is not None:
            out["groundedness"] = self.groundedness
        return out

    @staticmethod
    def from_dict(d: Mapping[str, float]) -> WindowScores:
        return WindowScores(int(d.get("generations", 0)), int(d.get("scored", 0)), d.get("groundedness"),
                            d.get("refusal_rate", 0.0), d.get("pii_leak_rate", 0.0),
                            d.get("negative_feedback_rate", 0.0), int(d.get("feedback", 0)))


def aggregate(scores: Sequence[tuple[float | None, bool, bool, bool | None]]) -> WindowScores:
    """A window's scores from (groundedness, refused, pii leak, negative feedback or None) per generation."""
    n = len(scores)
    grounded = [g for g, _, _, _ in scores if g is not None]
    feedback = [f for _, _, _, f in scores if f is not None]
    return WindowScores(
        generations=n, scored=len(grounded),
        groundedness=sum(grounded) / len(grounded) if grounded else None,
        refusal_rate=sum(1 for _, r, _, _ in scores if r) / n if n else 0.0,
        pii_leak_rate=sum(1 for _, _, p, _ in scores if p) / n if n else 0.0,
        negative_feedback_rate=sum(1 for f in feedback if f) / n if n else 0.0,
        feedback=len(feedback))


def pooled(windows: Sequence[WindowScores]) -> WindowScores | None:
    """Several reference windows as one (weighted by their generations)."""
    if not windows:
        return None
    n = sum(w.generations for w in windows)
    scored = sum(w.scored for w in windows)
    if n == 0:
        return None
    g = sum(w.groundedness * w.scored for w in windows if w.groundedness is not None)
    return WindowScores(n, scored, g / scored if scored else None,
                        sum(w.refusal_rate * w.generations for w in windows) / n,
                        sum(w.pii_leak_rate * w.generations for w in windows) / n,
                        sum(w.negative_feedback_rate * w.generations for w in windows) / n,
                        sum(w.feedback for w in windows))


@dataclass(frozen=True)
class Thresholds:
    groundedness_drop: float = 0.15
    refusal_rise: float = 0.15
    pii_leak_rate: float = 0.02
    negative_feedback_rate: float = 0.2
    min_scored: int = 10


@dataclass(frozen=True)
class MetricCheck:
    """One metric of a window against its reference: the score the decision compared, its limit."""

    metric: str
    value: float
    reference: float | None
    score: float  # the drop, the rise or the rate that was compared with the threshold
    threshold: float
    degraded: bool
    method: str


@dataclass
class QualityDecision:
    checks: list[MetricCheck] = field(default_factory=list)

    @property
    def degraded(self) -> list[MetricCheck]:
        return [c for c in self.checks if c.degraded]

    @property
    def drifted(self) -> bool:
        return bool(self.degraded)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.metric} {c.method} {c.score:.3f} > {c.threshold:g}" for c in self.degraded]


def judge(window: WindowScores, reference: WindowScores, t: Thresholds) -> QualityDecision:
    """Compare a window with the reference: groundedness mean dropped by more than `groundedness_drop` (with at
    least `min_scored` scored answers on both sides), refusal rate rose by more than `refusal_rise`, PII leak rate
    above `pii_leak_rate`, negative feedback rate above `negative_feedback_rate` (the last two are absolute: any
    leak is bad whatever the reference did)."""
    out = QualityDecision()
    if window.groundedness is not None and reference.groundedness is not None:
        drop = reference.groundedness - window.groundedness
        enough = window.scored >= t.min_scored and reference.scored >= t.min_scored
        out.checks.append(MetricCheck("groundedness", window.groundedness, reference.groundedness, drop,
                                      t.groundedness_drop, enough and drop > t.groundedness_drop, "mean_drop"))
    rise = window.refusal_rate - reference.refusal_rate
    out.checks.append(MetricCheck("refusal_rate", window.refusal_rate, reference.refusal_rate, rise, t.refusal_rise,
                                  rise > t.refusal_rise, "rate_rise"))
    out.checks.append(MetricCheck("pii_leak_rate", window.pii_leak_rate, reference.pii_leak_rate,
                                  window.pii_leak_rate, t.pii_leak_rate, window.pii_leak_rate > t.pii_leak_rate,
                                  "rate"))
    out.checks.append(MetricCheck("negative_feedback_rate", window.negative_feedback_rate,
                                  reference.negative_feedback_rate, window.negative_feedback_rate,
                                  t.negative_feedback_rate,
                                  window.negative_feedback_rate > t.negative_feedback_rate, "rate"))
    return out


def review_order(groundedness: float | None, refused: bool, pii_leak: bool, negative: bool = False,
                 ) -> tuple[int, int, float, int]:
    """Sort key of a window's answers for review sampling, worst first: PII leaks, then answers with negative
    feedback, then the least grounded, then refusals."""
    return (0 if pii_leak else 1, 0 if negative else 1, groundedness if groundedness is not None else 2.0,
            0 if refused else 1)
