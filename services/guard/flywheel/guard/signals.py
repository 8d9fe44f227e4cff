"""What the classifier rails see in a text: each head's score, the larger of the trained detector's
probability and the rules' score (`rules.py`), and which rules matched."""

from __future__ import annotations

from dataclasses import dataclass, field

from flywheel.guard import rules
from flywheel.guard.detectors import HEADS, Detectors

RULES = {"injection": rules.INJECTION, "other_customer_data": rules.OTHER_CUSTOMER}


@dataclass(frozen=True)
class Signals:
    # head -> score in 0..1
    scores: dict[str, float]
    # head -> names of the rules that matched
    matched: dict[str, list[str]] = field(default_factory=dict)


def signals(detectors: Detectors, text: str) -> Signals:
    scores = detectors.scores(text)
    matched: dict[str, list[str]] = {}
    for head, head_rules in RULES.items():
        score, names = rules.rule_score(head_rules, text, model=lambda t, h=head: detectors.scores(t)[h])
        if names:
            matched[head] = names
            scores[head] = max(scores[head], score)
    return Signals(scores, matched)


def flagged(detectors: Detectors, found: Signals, head: str, threshold: float | None = None) -> bool:
    return found.scores[head] >= (detectors.thresholds[head] if threshold is None else threshold)


__all__ = ["HEADS", "Signals", "flagged", "signals"]
