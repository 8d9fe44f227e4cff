"""The review app's pure parts: Cohen's kappa, agreement per queue and reviewer pair, turning review requests
into queue items (the row of a batch, entity keys, dedupe keys, answers), who may do what, and its events."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from sklearn.metrics import cohen_kappa_score

from flywheel.common.auth import Principal, Role
from flywheel.common.errors import PoisonEvent
from flywheel.proto.events.v1 import predictions_pb2, reviews_pb2
from flywheel.review import quality
from flywheel.review.access import Actor, Forbidden, actor_of_principal
from flywheel.review.feedback import decision_events
from flywheel.review.intake import double_labelled, item_from_event
from flywheel.review.store import Decision, Item
from tests.review_helpers import answer_request, predictive_request

# -- kappa ------------------------------------------------------------------------------------------------


def test_kappa_of_a_textbook_table() -> None:
    """50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15. p_o = 0.7, p_e = 0.5, kappa = 0.4."""
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert quality.cohen_kappa(pairs) == pytest.approx(0.4)
    agreement = quality.agreement(pairs)
    assert (agreement.items, agreement.agreed, agreement.observed) == (50, 35, 0.7)


def test_kappa_edges() -> None:
    assert quality.cohen_kappa([]) is None
    assert quality.cohen_kappa([("a", "a")] * 5) is None  # chance agreement is 1: undefined
    assert quality.cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert quality.cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    # Agreement no better than chance: 0.
    assert quality.cohen_kappa([("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]) == pytest.approx(0.0)


def test_kappa_matches_scikit_learn_on_random_ratings() -> None:
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(5, 80)
        a = [rng.choice("xyz") for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.choice("xyz") for x in a]
        expected = cohen_kappa_score(a, b)
        got = quality.cohen_kappa(list(zip(a, b, strict=True)))
        if got is None:  # undefined: scikit-learn says nan
            assert math.isnan(expected)
        else:
            assert got == pytest.approx(expected)


def test_agreement_per_queue_and_reviewer_pair() -> None:
    def r(item: str, reviewer: str, category: str, queue: str = "fraud") -> quality.Rating:
        return quality.Rating(item, queue, reviewer, category)

    ratings = [r("1", "ann", "fraud"), r("1", "ben", "fraud"),
               r("2", "ben", "legit"), r("2", "ann", "fraud"),   # ben first this time
               r("3", "cat", "legit"), r("3", "ann", "legit"),
               r("4", "ann", "fraud"),                            # one label only: left out
               r("5", "dan", "approve", "bot"), r("5", "eve", "reject", "bot"),
               r("6", "ann", "fraud"), r("6", "ann", "legit")]    # the same reviewer twice: not a pair
    by_queue = quality.by_queue(ratings)
    assert set(by_queue) == {"fraud", "bot"}
    assert (by_queue["fraud"].items, by_queue["fraud"].agreed) == (3, 2)
    # Rater A = first label, B = second: (fraud, fraud), (legit, fraud), (legit, legit).
    assert by_queue["fraud"].kappa == pytest.approx(cohen_kappa_score(["fraud", "legit", "legit"],
                                                                      ["fraud", "fraud", "legit"]))
    pairs = quality.by_reviewer_pair(ratings)
    assert set(pairs) == {("fraud", "ann", "ben"), ("fraud", "ann", "cat"), ("bot", "dan", "eve")}
    # Oriented by name: ann's labels vs ben's, whoever labelled first.
    assert pairs[("fraud", "ann", "ben")].kappa == pytest.approx(cohen_kappa_score(["fraud", "fraud"],
                                                                                   ["fraud", "legit"]))
    assert pairs[("bot", "dan", "eve")].agreed == 0


# -- intake -----------------------------------------------------------------------------------------------


def test_a_predictive_request_becomes_the_row_the_monitor_sampled() -> None:
    event = predictive_request("fraud", "req-1", rows=3, row=2, probability=0.47)
    item = item_from_event(event, 0.0)
    assert (item.queue, item.kind, item.request_id, item.entity_id) == ("fraud", "predictive", "req-1", "req-1-t2")
    assert item.item_key == "req-1/req-1-t2"
    assert item.entity_keys == {"transaction_id": "req-1-t2", "customer_id": "c-2"}
    inputs = {t["name"]: t["values"] for t in item.content["inputs"]}
    assert inputs["numeric"] == [300.0, 15.0, 0.0]
    assert inputs["categorical"] == ["cat2"]
    assert inputs["transaction_id"] == ["req-1-t2"]
    assert item.content["prediction"]["label"] is False
    assert item.content["prediction"]["score"] == pytest.approx(0.47)
    assert item.event_time == event.payload.event_time.ToDatetime(UTC)
    assert item.model_version == 3 and item.reason == reviews_pb2.REVIEW_REASON_LOW_CONFIDENCE
    # The same event builds the same item (its id is derived from the review id).
    assert item_from_event(event, 0.0).id == item.id


def test_an_answer_request_becomes_an_answer_item() -> None:
    item = item_from_event(answer_request("assistant", "req-9"), 0.0)
    assert item.kind == "answer" and item.queue == "assistant" and item.item_key == "req-9"
    assert item.content["completion"].startswith("You can dispute")
    assert [m["role"] for m in item.content["messages"]] == ["system", "user"]
    assert [c["title"] for c in item.content["chunks"]] == ["Disputes", "Fees"]
    assert (item.prompt_name, item.prompt_version) == ("assistant-prompt", 4)
    assert item.entity_keys == {}


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.model.ClearField("name"), "names no model"),
    (lambda r: setattr(r, "request_id", ""), "names no request id"),
    (lambda r: r.context.__setitem__("row_index", "two"), "not a row number"),
    (lambda r: r.context.__setitem__("row_index", "7"), "outside the request's 3 rows"),
])
def test_requests_that_cannot_be_queued_are_poison(change, message: str) -> None:  # type: ignore[no-untyped-def]
    event = predictive_request("fraud", "req-1")
    change(event.payload)
    with pytest.raises(PoisonEvent, match=message):
        item_from_event(event, 0.0)


def test_double_labelling_picks_a_stable_share() -> None:
    keys = [f"req-{i}/t" for i in range(4000)]
    picked = [k for k in keys if double_labelled(k, 0.25)]
    assert 0.22 < len(picked) / len(keys) < 0.28
    assert picked == [k for k in keys if double_labelled(k, 0.25)]  # a replay picks the same
    assert not double_labelled("x", 0.0) and double_labelled("x", 1.0)


# -- access -----------------------------------------------------------------------------------------------


def test_roles_and_queue_scopes() -> None:
    reviewer = Actor("rita", "reviewer", frozenset({"fraud"}))
    lead = Actor("leo", "lead", frozenset({"fraud"}))
    admin = Actor("ada", "admin", frozenset({"fraud"}))
    assert reviewer.may_work("fraud") and not reviewer.may_work("assistant") and not reviewer.may_lead("fraud")
    assert lead.may_lead("fraud") and not lead.may_lead("assistant")
    assert admin.may_lead("assistant") and admin.may_work("anything")
    with pytest.raises(Forbidden):
        reviewer.require_lead()
    with pytest.raises(Forbidden):
        lead.require_lead("assistant")
    assert lead.may_create("reviewer", frozenset({"fraud"}))
    assert not lead.may_create("reviewer", frozenset())  # all queues: more than it leads
    assert not lead.may_create("lead", frozenset({"fraud"}))
    assert Actor("all", "lead").may_create("reviewer", frozenset())
    assert admin.may_create("admin", frozenset())
    assert actor_of_principal(Principal("t", frozenset({Role.LEAD, Role.READER}))).role == "lead"
    assert actor_of_principal(Principal("t", frozenset({Role.ADMIN}))).role == "admin"
    with pytest.raises(Forbidden, match="needs role reviewer, lead or admin"):
        actor_of_principal(Principal("t", frozenset({Role.OPERATOR})))


# -- events -----------------------------------------------------------------------------------------------


def test_a_final_label_is_feedback_like_a_chargeback() -> None:
    new = item_from_event(predictive_request("fraud", "req-1", row=1, probability=0.48), 0.0)
    item = Item(**{k: getattr(new, k) for k in (
        "id", "review_id", "item_key", "queue", "kind", "request_id", "entity_id", "reason", "priority", "model_name",
        "model_version", "prompt_name", "prompt_version", "guard_verdict_id", "content", "entity_keys", "event_time",
        "requested_at")}, received_at=datetime.now(UTC), labels_needed=1, labels_done=1, status="done",
        final_decision_id="d-1", completed_at=None)
    decision = Decision(id="d-1", item_id=item.id, queue="fraud", reviewer="rita", action="label", category="fraud",
                        label={"flag": True})
    decided_at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    feedback, completed = decision_events(item, decision, ["rita"], decided_at)
    assert (feedback.topic.name, completed.topic.name) == ("feedback.received", "reviews.completed")
    assert feedback.key == completed.key == "req-1"
    fb = feedback.payload
    assert fb.source == predictions_pb2.FEEDBACK_SOURCE_REVIEWER and fb.label.flag is True
    assert fb.entity_id == "req-1-t1" and dict(fb.entity_keys) == {"transaction_id": "req-1-t1", "customer_id": "c-1"}
    assert fb.event_time.ToDatetime(UTC) == item.event_time and fb.observed_at.ToDatetime(UTC) == decided_at
    assert completed.payload.decision == reviews_pb2.REVIEW_DECISION_CORRECTED  # predicted legit, labelled fraud
    # The same decision always makes the same events (ids derived from it).
    assert [e.id for e in decision_events(item, decision, ["rita"], decided_at)] == [feedback.id, completed.id]
