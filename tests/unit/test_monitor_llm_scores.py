"""The monitor's online scores of LLM answers: per answer (groundedness against the rendered prompt, refusal,
PII leak through redaction placeholders), feedback, a window's aggregate and the quality decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flywheel.common.redaction import redact
from flywheel.monitor.llm import generation_of, sampled
from flywheel.monitor.llm_scores import (
    Thresholds,
    WindowScores,
    aggregate,
    feedback_negative,
    is_refusal,
    judge,
    pii_kinds,
    pooled,
    review_order,
    score_generation,
)
from flywheel.proto.events.v1 import common_pb2, predictions_pb2

PROMPT = """<|im_start|>system
You are Northwind Assist.<|im_end|>
<|im_start|>user
Passages from Northwind Bank's documents:

[1] Fees
The monthly account fee is $5, waived when the balance stays above $1,000. A replacement card costs $10 and
arrives in 5 business days.

Customer question: How much is the monthly fee?<|im_end|>
<|im_start|>assistant
"""


def test_groundedness_is_judged_against_the_rendered_prompt() -> None:
    good = score_generation("The monthly account fee is $5, waived when your balance stays above $1,000 [1].",
                            PROMPT, "stop", 1)
    assert good.groundedness == 1.0 and not good.refused and not good.pii_leak
    bad = score_generation("The monthly fee is $25 and includes free international wire transfers. Premium "
                           "members get lounge access at airports.", PROMPT, "stop", 1)
    assert bad.groundedness == 0.0
    # A wrong figure alone is unsupported, however familiar its words.
    assert score_generation("The monthly account fee is $7.", PROMPT, "stop", 1).groundedness == 0.0
    # No prompt logged, or no claim: nothing to judge.
    assert score_generation("The fee is $5.", "", "stop", 1).groundedness is None
    assert score_generation("Thank you!", PROMPT, "stop", 1).groundedness is None


@pytest.mark.parametrize(("completion", "finish", "chunks", "refused"), [
    ("", "content_filter", 2, True),  # the guard blocked
    ("I can't find that in Northwind Bank's documents, so I can't answer it.", "refusal", 0, True),  # template's
    ("I can't find that in Northwind Bank's documents, so I can't answer it.", "stop", 0, True),
    ("I'm sorry, but I cannot give investment advice.", "stop", 3, True),
    ("I am unable to help with tax questions.", "stop", 2, True),
    ("The fee is $5 [1]. I cannot share your PIN with anyone, though, as it is private.", "stop", 2, False),
    ("The fee is $5 [1]. I cannot share your PIN with anyone.", "stop", 0, True),  # no passages: phrasing anywhere
    ("The fee is $5 [1].", "stop", 1, False),
    ("", "length", 1, False),
])
def test_refusals(completion: str, finish: str, chunks: int, refused: bool) -> None:
    assert is_refusal(completion, finish, chunks) is refused
    if refused:
        assert score_generation(completion, PROMPT, finish, chunks).groundedness is None


def test_pii_leak_from_placeholders_of_the_redacted_log_and_raw_pii() -> None:
    logged = redact("Regards, Jane Smith. Write to jane.smith@example.com or quote card 4111 1111 1111 1111.").text
    assert "[EMAIL]" in logged and "jane" not in logged.lower()
    assert pii_kinds(logged) == ("card_number", "email", "name")
    assert pii_kinds("Your IBAN GB82 WEST 1234 5698 7654 32 is on file.") == ("iban",)  # missed by redaction
    assert pii_kinds("The fee is $5 [1].") == ()
    assert score_generation(logged, PROMPT, "stop", 1).pii_leak


def test_feedback_polarity() -> None:
    neg, pos = ["thumbs_down", "rejected", "corrected"], ["thumbs_up", "approved"]
    kw = dict(negative_texts=neg, positive_texts=pos)
    assert feedback_negative(flag=False, **kw) is True
    assert feedback_negative(flag=True, **kw) is False
    assert feedback_negative(number=0.2, **kw) is True and feedback_negative(number=0.9, **kw) is False
    assert feedback_negative(text="Thumbs_Down", **kw) is True
    assert feedback_negative(text="approved", **kw) is False
    assert feedback_negative(text="whatever", **kw) is None
    assert feedback_negative(text="approved", corrected="The fee is $5.", **kw) is True  # a correction is negative
    assert feedback_negative(**kw) is None


def test_window_aggregate_reference_and_decision() -> None:
    good = aggregate([(1.0, False, False, None)] * 18 + [(None, True, False, False)] * 2)
    assert good.generations == 20 and good.scored == 18 and good.groundedness == 1.0
    assert good.refusal_rate == 0.1 and good.pii_leak_rate == 0.0 and good.negative_feedback_rate == 0.0
    assert good.feedback == 2
    assert WindowScores.from_dict(good.as_dict()) == good
    reference = pooled([good, aggregate([(0.8, False, False, None)] * 20)])
    assert reference is not None and reference.generations == 40 and reference.scored == 38
    assert reference.groundedness == pytest.approx((18 * 1.0 + 20 * 0.8) / 38)
    assert reference.refusal_rate == pytest.approx(0.05)
    t = Thresholds(groundedness_drop=0.15, refusal_rise=0.15, pii_leak_rate=0.02, negative_feedback_rate=0.2,
                   min_scored=10)

    assert not judge(good, reference, t).drifted
    worse = aggregate([(0.3, False, True, True)] * 15 + [(None, True, False, None)] * 5)
    decision = judge(worse, reference, t)
    assert {c.metric for c in decision.degraded} == {"groundedness", "refusal_rate", "pii_leak_rate",
                                                     "negative_feedback_rate"}
    drop = next(c for c in decision.checks if c.metric == "groundedness")
    assert drop.score == pytest.approx(reference.groundedness - 0.3) and drop.method == "mean_drop"
    assert decision.reasons and all(">" in r for r in decision.reasons)
    # Too few scored answers: groundedness is not judged, the rates still are.
    few = aggregate([(0.0, False, False, None)] * 5 + [(None, False, False, None)] * 15)
    assert not judge(few, reference, t).drifted
    # One leak in 20 answers is 5% > 2%.
    leak = aggregate([(1.0, False, False, None)] * 19 + [(1.0, False, True, None)])
    assert [c.metric for c in judge(leak, reference, t).degraded] == ["pii_leak_rate"]


def test_review_order_puts_the_worst_answers_first() -> None:
    answers = {"ok": (1.0, False, False, False), "ungrounded": (0.0, False, False, False),
               "refusal": (None, True, False, False), "leak": (1.0, False, True, False),
               "disliked": (0.9, False, False, True)}
    ranked = sorted(answers, key=lambda k: review_order(*answers[k]))
    assert ranked == ["leak", "disliked", "ungrounded", "ok", "refusal"]


def _logged(arm: int, application: str = "support", llm: bool = True) -> predictions_pb2.PredictionLogged:
    message = predictions_pb2.PredictionLogged(request_id="r-1", model=common_pb2.ModelRef(name="smol", version=2),
                                               arm=arm)
    if llm:
        message.llm.CopyFrom(predictions_pb2.LlmExchange(application=application, prompt=PROMPT,
                                                         completion="The monthly account fee is $5 [1].",
                                                         finish_reason="stop", context_chunk_ids=["c1"]))
    return message


def test_which_generations_are_scored() -> None:
    now = datetime.now(UTC)
    g = generation_of(_logged(predictions_pb2.PREDICTION_ARM_CHAMPION), now)
    assert not isinstance(g, str) and g.application == "support" and g.groundedness == 1.0 and g.ts == now
    assert not isinstance(generation_of(_logged(predictions_pb2.PREDICTION_ARM_CHALLENGER), now), str)
    assert generation_of(_logged(predictions_pb2.PREDICTION_ARM_EVALUATION), now) == "arm"
    assert generation_of(_logged(predictions_pb2.PREDICTION_ARM_SHADOW), now) == "arm"
    assert generation_of(_logged(predictions_pb2.PREDICTION_ARM_CHAMPION, application=""), now) == "no_application"
    assert generation_of(_logged(predictions_pb2.PREDICTION_ARM_CHAMPION, llm=False), now) == "not_llm"


def test_sampling_is_deterministic_by_request_id() -> None:
    ids = [f"req-{i}" for i in range(2000)]
    picked = [i for i in ids if sampled(i, 0.25)]
    assert picked == [i for i in ids if sampled(i, 0.25)]
    assert 400 < len(picked) < 600
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])
