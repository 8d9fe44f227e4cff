"""The shared groundedness judge (guard rail, evaluator metric, online scoring)."""

from __future__ import annotations

from flywheel.common.grounding import groundedness, sentences

FEE = "A foreign transaction fee of 2.5% of the amount applies; cash withdrawals cost EUR 1.50 each."


def test_a_decimal_point_does_not_end_a_sentence() -> None:
    text = "The fee is 2.5% of the amount. Cash costs EUR 1.50 each! Disputes are free."
    assert [text[s:e].strip() for s, e in sentences(text)] == [
        "The fee is 2.5% of the amount.", "Cash costs EUR 1.50 each!", "Disputes are free."]


def test_claims_with_figures_are_grounded_only_by_the_same_figures() -> None:
    assert groundedness("The foreign transaction fee is 2.5% of the amount.", [FEE]) == 1.0
    assert groundedness("The foreign transaction fee is 3% of the amount.", [FEE]) == 0.0
    assert groundedness("Cash withdrawals cost EUR 1.50. Thank you!", [FEE]) == 1.0


def test_an_answer_without_claims_has_no_groundedness() -> None:
    assert groundedness("Thank you!", [FEE]) is None

