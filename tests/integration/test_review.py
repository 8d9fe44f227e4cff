"""The review app on the real broker and database, served in-process over HTTP: items from reviews.requested
enter once, decisions reach feedback.received and reviews.completed exactly once (also across a kill between
the decision and the publish), undo leaves no event behind, leases expire, two reviewers never hold one item,
double labelling measures agreement, a lead resolves conflicts, a reviewer's label reaches the trainer, and
bad input is a 4xx with a JSON error."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sklearn.metrics import cohen_kappa_score

from flywheel.common.embedded import free_port
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.topics import FEEDBACK_RECEIVED, REVIEWS_COMPLETED, REVIEWS_REQUESTED
from flywheel.proto.events.v1 import predictions_pb2, reviews_pb2
from flywheel.review.main import ReviewApp
from tests import polling
from tests.kafka_helpers import consumed_through, end_offsets, read_records
from tests.review_helpers import answer_request, client, create_token, predictive_request, review_settings, wait_open

pytestmark = pytest.mark.integration


@dataclass
class Running:
    app: ReviewApp
    reviewer: httpx.AsyncClient
    lead: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.app.url


@pytest.fixture(scope="module")
async def review(infra) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    app = ReviewApp(review_settings(infra))
    await app.start()
    await wait_assigned(app.consumer)
    async with client(app.url, infra.tokens.reviewer) as reviewer, client(app.url, infra.tokens.lead) as lead:
        yield Running(app, reviewer, lead)
    await app.stop()


async def scalar(app: ReviewApp, query: str, *args: Any) -> Any:
    async with app.db.connection() as conn:
        row = await (await conn.execute(query, args)).fetchone()
    return next(iter(row.values())) if row else None


async def published(bootstrap: str, topic: str, request_ids: set[str], expected: int) -> list[Any]:
    """The records of `topic` about these requests, read until `expected` distinct events are there."""
    def about(records: list[Any]) -> list[Any]:
        return [r for r in records if r.key.decode() in request_ids]

    records = await read_records(bootstrap, topic, until=lambda rs: len({dict(r.headers)["ce_id"]
                                                                          for r in about(rs)}) >= expected,
                                 timeout=60)
    return about(records)


async def outbox_ids(app: ReviewApp, topic: str, request_ids: set[str]) -> list[str]:
    async with app.db.connection() as conn:
        rows = await (await conn.execute("SELECT event_id FROM outbox WHERE topic = %s AND key = ANY(%s)",
                                         (topic, list(request_ids)))).fetchall()
    return [r["event_id"] for r in rows]


# -- intake ------------------------------------------------------------------------------------------------


async def test_items_enter_a_queue_once(review: Running, infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    queue = f"fraud-{unique}"
    first = predictive_request(queue, f"r1-{unique}", row=1)
    again = predictive_request(queue, f"r1-{unique}", row=1, review_id=first.payload.review_id, event_id=first.id)
    # The same prediction asked for again under other ids (e.g. disputed after it was sampled).
    disputed = predictive_request(queue, f"r1-{unique}", row=1, reason=reviews_pb2.REVIEW_REASON_DISPUTED)
    other_row = predictive_request(queue, f"r1-{unique}", row=2)
    other = predictive_request(queue, f"r2-{unique}", row=0)
    await send_events(producer, [first, again, disputed, other_row, other, first])
    ends = await end_offsets(infra.kafka_bootstrap, REVIEWS_REQUESTED.name)
    await consumed_through(infra.kafka_bootstrap, review.app.settings.consumer_group, REVIEWS_REQUESTED.name, ends)
    assert await scalar(review.app, "SELECT count(*) FROM items WHERE queue = %s", queue) == 3
    keys = await scalar(review.app, "SELECT array_agg(item_key ORDER BY item_key) FROM items WHERE queue = %s", queue)
    assert keys == sorted([f"r1-{unique}/r1-{unique}-t1", f"r1-{unique}/r1-{unique}-t2", f"r2-{unique}/r2-{unique}-t0"])

    claimed = (await review.reviewer.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
    # The row of the batch the monitor sampled: its values, its entity keys, the model's prediction.
    assert claimed["entity_keys"] in ({"transaction_id": f"r1-{unique}-t1", "customer_id": "c-1"},
                                      {"transaction_id": f"r1-{unique}-t2", "customer_id": "c-2"},
                                      {"transaction_id": f"r2-{unique}-t0", "customer_id": "c-0"})
    numeric = next(t for t in claimed["content"]["inputs"] if t["name"] == "numeric")
    assert len(numeric["values"]) == 3
    assert claimed["content"]["prediction"]["label"] is True
    assert claimed["choices"] == ["legit", "fraud"]
    assert claimed["model"] == {"name": queue, "version": 3}


async def test_a_poison_request_is_dead_lettered_and_the_queue_goes_on(review: Running, producer,  # type: ignore[no-untyped-def]
                                                                       unique: str) -> None:
    queue = f"poison-{unique}"
    bad = predictive_request("", f"bad-{unique}")  # no model: no queue for it
    good = predictive_request(queue, f"good-{unique}")
    await send_events(producer, [bad, good])
    await wait_open(review.reviewer, queue, 1)
    dead = await read_records(review.app.settings.kafka_bootstrap, REVIEWS_REQUESTED.dlq,
                              until=lambda rs: any(dict(r.headers).get("ce_id") == bad.id.encode() for r in rs))
    [record] = [r for r in dead if dict(r.headers).get("ce_id") == bad.id.encode()]
    assert b"names no model" in dict(record.headers)["dlq_error"]


# -- decisions and their events ----------------------------------------------------------------------------


async def test_decisions_reach_both_topics_exactly_once(review: Running, infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    queue, app_name = f"fraud-{unique}", f"assistant-{unique}"
    await send_events(producer, [predictive_request(queue, f"p-{unique}", row=1, probability=0.48),
                                 answer_request(app_name, f"a1-{unique}"), answer_request(app_name, f"a2-{unique}"),
                                 answer_request(app_name, f"a3-{unique}")])
    await wait_open(review.reviewer, queue, 1)
    await wait_open(review.reviewer, app_name, 3)

    item = (await review.reviewer.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
    decided = await review.reviewer.post(f"/api/v1/items/{item['id']}/decision", json={"label": "fraud"})
    assert decided.status_code == 201, decided.text
    assert decided.json()["item_status"] == "done"

    verdicts = {"approve": {"action": "approve"},
                "correct": {"action": "correct", "corrected_completion": "You can dispute a card payment within "
                            "60 days of the statement, free of charge.", "comment": "wrong deadline"},
                "reject": {"action": "reject", "comment": "answers a question nobody asked"}}
    seen = {}
    for action, body in verdicts.items():
        answer = (await review.reviewer.post(f"/api/v1/queues/{app_name}/claim")).json()["item"]
        assert answer["kind"] == "answer" and answer["choices"] == ["approve", "correct", "reject"]
        assert [c["chunk_id"] for c in answer["content"]["chunks"]] == ["chunk-1", "chunk-2"]
        assert answer["prompt"] == {"name": f"{app_name}-prompt", "version": 4}
        response = await review.reviewer.post(f"/api/v1/items/{answer['id']}/decision", json=body)
        assert response.status_code == 201, response.text
        seen[answer["request_id"]] = action

    requests = {item["request_id"], *seen}
    feedback = await published(infra.kafka_bootstrap, FEEDBACK_RECEIVED.name, requests, 4)
    completed = await published(infra.kafka_bootstrap, REVIEWS_COMPLETED.name, requests, 4)
    # Exactly once: one event per decision and topic, the ones the outbox recorded, each on the topic once.
    for topic, records in ((FEEDBACK_RECEIVED.name, feedback), (REVIEWS_COMPLETED.name, completed)):
        ids = [dict(r.headers)["ce_id"].decode() for r in records]
        assert sorted(ids) == sorted(await outbox_ids(review.app, topic, requests))
        assert len(ids) == len(set(ids)) == 4
        assert all(dict(r.headers).get("traceparent") for r in records)  # the decision's trace goes along

    [label] = [predictions_pb2.FeedbackReceived.FromString(r.value) for r in feedback
               if r.key.decode() == item["request_id"]]
    # Like a chargeback: a flag, the row's entity keys and event time, so the trainer can use it.
    assert label.source == predictions_pb2.FEEDBACK_SOURCE_REVIEWER and label.label.flag is True
    assert label.entity_id == f"p-{unique}-t1"
    assert dict(label.entity_keys) == {"transaction_id": f"p-{unique}-t1", "customer_id": "c-1"}
    assert label.HasField("event_time") and label.model.version == 3
    by_request = {r.key.decode(): reviews_pb2.ReviewCompleted.FromString(r.value) for r in completed}
    # The model predicted legit (0.48); the reviewer says fraud: a correction of the prediction.
    assert by_request[item["request_id"]].decision == reviews_pb2.REVIEW_DECISION_CORRECTED
    assert by_request[item["request_id"]].reviewer == "reviewer"
    for request_id, action in seen.items():
        done = by_request[request_id]
        assert done.decision == {"approve": reviews_pb2.REVIEW_DECISION_APPROVED,
                                 "correct": reviews_pb2.REVIEW_DECISION_CORRECTED,
                                 "reject": reviews_pb2.REVIEW_DECISION_REJECTED}[action]
        if action == "correct":
            assert done.corrected_completion.endswith("free of charge.")
        if action == "reject":
            assert done.comment == "answers a question nobody asked"


async def test_undo_within_the_window_leaves_no_event_behind(infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    app = ReviewApp(review_settings(infra, undo_seconds=30.0))
    await app.start()
    try:
        queue = f"undo-{unique}"
        await send_events(producer, [predictive_request(queue, f"u-{unique}")])
        async with client(app.url, infra.tokens.reviewer) as http:
            await wait_open(http, queue, 1)
            item = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
            first = (await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": "fraud"})).json()
            held = await outbox_ids(app, FEEDBACK_RECEIVED.name, {item["request_id"]})
            assert len(held) == 1  # written with the decision, held until the undo window ends
            undone = await http.post(f"/api/v1/decisions/{first['decision']['id']}/undo")
            assert undone.status_code == 200, undone.text
            assert undone.json()["status"] == "open"
            assert await outbox_ids(app, FEEDBACK_RECEIVED.name, {item["request_id"]}) == []
            # The item is back with the reviewer, who decides again.
            again = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
            assert again["id"] == item["id"]
            second = (await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": "legit"})).json()
            twice = await http.post(f"/api/v1/decisions/{first['decision']['id']}/undo")
            assert twice.status_code == 409 and "undone already" in twice.json()["error"]
        # Let the second decision out now (as if its window had passed) and wait for it: the first's never came.
        async with app.db.connection() as conn:
            await conn.execute("UPDATE outbox SET not_before = now() WHERE key = %s", (item["request_id"],))
        app.relay.wake()
        records = await published(infra.kafka_bootstrap, FEEDBACK_RECEIVED.name, {item["request_id"]}, 1)
        assert [predictions_pb2.FeedbackReceived.FromString(r.value).label.flag for r in records] == [False]
        assert {dict(r.headers)["ce_id"].decode() for r in records} == set(
            await outbox_ids(app, FEEDBACK_RECEIVED.name, {item["request_id"]}))
        assert second["decision"]["id"] != first["decision"]["id"]
        async with client(app.url, infra.tokens.reviewer) as http:  # sent: too late to undo
            late = await http.post(f"/api/v1/decisions/{second['decision']['id']}/undo")
        assert late.status_code == 409 and "published" in late.json()["error"]
    finally:
        await app.stop()


def start_process(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """`python -m flywheel.review` as a deployment runs it; its log goes to a file (a pipe nobody reads
    would fill up and block the process)."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flywheel.review", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def until_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    async def ready() -> bool:
        assert proc.poll() is None, f"the review app exited:\n{log.read_text()[-4000:]}"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{url}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False
    await polling.eventually(ready, 90, "the review app ready", every=0.2)


async def test_a_decision_survives_a_kill_before_its_events_are_published(infra, producer, unique: str,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    settings = review_settings(infra)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")},
           "FLYWHEEL_KAFKA_BOOTSTRAP": infra.kafka_bootstrap, "FLYWHEEL_DATABASE_URL": infra.database_url,
           "FLYWHEEL_HOME": str(infra.home), "FLYWHEEL_REVIEW_DB_SCHEMA": settings.db_schema,
           "FLYWHEEL_REVIEW_CONSUMER_GROUP": settings.consumer_group, "FLYWHEEL_REVIEW_UNDO_SECONDS": "8",
           "FLYWHEEL_REVIEW_METRICS_PORT": "0", "FLYWHEEL_REGISTRY_ADDR": "", "FLYWHEEL_LOG_JSON": "false",
           "FLYWHEEL_REVIEW_LABEL_NAMES": '{"*": ["legit", "fraud"]}',
           "FLYWHEEL_REVIEW_DOUBLE_LABEL_SHARE": "0"}  # one label completes an item
    url = f"http://127.0.0.1:{port}"
    queue = f"kill-{unique}"
    await send_events(producer, [predictive_request(queue, f"k{i}-{unique}", row=0) for i in range(3)])
    log = tmp_path / "review.log"
    proc = start_process(env, port, log)
    try:
        await until_ready(url, proc, log)
        async with client(url, infra.tokens.reviewer) as http:
            await wait_open(http, queue, 3)
            requests = set()
            for _ in range(3):
                item = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
                response = await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": "fraud"})
                assert response.status_code == 201, response.text
                requests.add(item["request_id"])
        # Killed within the undo window: the decisions are stored, their events still held in the outbox.
        async with await psycopg.AsyncConnection.connect(infra.database_url) as conn:
            held = await (await conn.execute(f"SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*)"
                                             f" FROM {settings.db_schema}.outbox")).fetchone()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert held == (6, 6), "the kill came after the publish: the test proves nothing"

        proc = start_process(env, port, log)
        await until_ready(url, proc, log)
        feedback = await published(infra.kafka_bootstrap, FEEDBACK_RECEIVED.name, requests, 3)
        completed = await published(infra.kafka_bootstrap, REVIEWS_COMPLETED.name, requests, 3)
        for records in (feedback, completed):
            ids = [dict(r.headers)["ce_id"].decode() for r in records]
            assert len(ids) == len(set(ids)) == 3
    finally:
        proc.kill()
        proc.wait(10)


# -- leases and concurrency --------------------------------------------------------------------------------


async def test_an_abandoned_lease_expires_and_the_item_returns(infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    app = ReviewApp(review_settings(infra, lease_seconds=1.0))
    await app.start()
    alice_token = await create_token(infra, f"alice-{unique}", "reviewer")
    bob_token = await create_token(infra, f"bob-{unique}", "reviewer")
    try:
        queue = f"lease-{unique}"
        await send_events(producer, [predictive_request(queue, f"l-{unique}")])
        async with client(app.url, alice_token) as alice, client(app.url, bob_token) as bob:
            await wait_open(alice, queue, 1)
            held = (await alice.post(f"/api/v1/queues/{queue}/claim")).json()
            assert (await bob.post(f"/api/v1/queues/{queue}/claim")).status_code == 204  # alice holds it

            async def bob_gets_it() -> dict[str, Any] | None:
                response = await bob.post(f"/api/v1/queues/{queue}/claim")
                return response.json() if response.status_code == 200 else None
            taken = await polling.eventually(bob_gets_it, 30, "the item back in the queue after alice's lease")
            assert taken["item"]["id"] == held["item"]["id"]
            late = await alice.post(f"/api/v1/items/{held['item']['id']}/decision", json={"label": "fraud"})
            assert late.status_code == 409 and "expired" in late.json()["error"]
            assert (await bob.post(f"/api/v1/items/{held['item']['id']}/decision",
                                   json={"label": "fraud"})).status_code == 201
    finally:
        await app.stop()


async def test_concurrent_reviewers_never_hold_the_same_item(review: Running, infra, producer,  # type: ignore[no-untyped-def]
                                                             unique: str) -> None:
    queue = f"race-{unique}"
    await send_events(producer, [predictive_request(queue, f"c{i}-{unique}", row=0) for i in range(12)])
    await wait_open(review.reviewer, queue, 12)
    tokens = [await create_token(infra, f"r{i}-{unique}", "reviewer") for i in range(16)]
    clients = [client(review.url, t) for t in tokens]
    try:
        responses = await asyncio.gather(*(c.post(f"/api/v1/queues/{queue}/claim") for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    claimed = [r.json()["item"]["id"] for r in responses if r.status_code == 200]
    assert sorted(r.status_code for r in responses) == [200] * 12 + [204] * 4
    assert len(set(claimed)) == 12


# -- double labelling, agreement, conflicts ------------------------------------------------------------------


async def test_double_labelling_measures_agreement_and_a_lead_resolves_conflicts(infra, producer,  # type: ignore[no-untyped-def]
                                                                                 unique: str) -> None:
    app = ReviewApp(review_settings(infra, double_label_share=1.0, undo_seconds=60.0))
    await app.start()
    queue = f"double-{unique}"
    tokens = {name: await create_token(infra, f"{name}-{unique}", "reviewer") for name in ("ann", "ben")}
    # What each says about items 0..9: they agree on 7 (4 fraud, 3 legit) and disagree on 3.
    ann = ["fraud", "fraud", "fraud", "fraud", "legit", "legit", "legit", "fraud", "fraud", "legit"]
    ben = ["fraud", "fraud", "fraud", "fraud", "legit", "legit", "legit", "legit", "legit", "fraud"]
    try:
        await send_events(producer, [predictive_request(queue, f"d{i}-{unique}", row=0) for i in range(10)])
        async with client(app.url, tokens["ann"]) as a, client(app.url, tokens["ben"]) as b, \
                client(app.url, infra.tokens.lead) as lead:
            await wait_open(a, queue, 10)
            for http, labels in ((a, ann), (b, ben)):
                for _ in range(10):
                    item = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
                    index = int(item["request_id"].split("-")[0][1:])
                    response = await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": labels[index]})
                    assert response.status_code == 201, response.text
                assert (await http.post(f"/api/v1/queues/{queue}/claim")).status_code == 204
            quality = (await lead.get("/api/v1/quality")).json()
            expected = cohen_kappa_score(ann, ben)
            assert quality["queues"][queue]["items"] == 10 and quality["queues"][queue]["agreed"] == 7
            assert quality["queues"][queue]["kappa"] == pytest.approx(expected)
            [pair] = [p for p in quality["pairs"] if p["queue"] == queue]
            assert (pair["reviewer"], pair["other"]) == (f"ann-{unique}", f"ben-{unique}")
            assert pair["kappa"] == pytest.approx(expected)
            assert quality["conflicts"][queue] == 3

            # A reviewer does not lead: no conflicts, no agreement.
            assert (await a.get("/api/v1/conflicts")).status_code == 403
            conflicts = (await lead.get("/api/v1/conflicts", params={"queue": queue})).json()
            assert len(conflicts) == 3 and all(len(c["decisions"]) == 2 for c in conflicts)
            target = conflicts[0]["item"]
            resolved = await lead.post(f"/api/v1/items/{target['id']}/resolve", json={"label": "legit"})
            assert resolved.status_code == 201 and resolved.json()["item_status"] == "done"
            assert len((await lead.get("/api/v1/conflicts", params={"queue": queue})).json()) == 2
            # The lead changes their mind within the undo window: back to conflict, its events withdrawn.
            undone = await lead.post(f"/api/v1/decisions/{resolved.json()['decision']['id']}/undo")
            assert undone.status_code == 200 and undone.json()["status"] == "conflict"
            assert len((await lead.get("/api/v1/conflicts", params={"queue": queue})).json()) == 3
            resolved = await lead.post(f"/api/v1/items/{target['id']}/resolve", json={"label": "fraud"})
            assert resolved.status_code == 201 and resolved.json()["item_status"] == "done"
        # The 7 agreed items and the resolved one have their events (one label each), the 2 conflicts none yet.
        async with app.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT count(*) AS n FROM outbox WHERE topic = %s", (FEEDBACK_RECEIVED.name,))).fetchone()
            flags = await (await conn.execute(
                "SELECT payload FROM outbox WHERE topic = %s AND key = %s", (FEEDBACK_RECEIVED.name,
                                                                             target["request_id"]))).fetchall()
        assert rows["n"] == 8
        assert [predictions_pb2.FeedbackReceived.FromString(r["payload"]).label.flag for r in flags] == [True]
    finally:
        await app.stop()


async def test_a_lead_of_one_queue_cannot_act_on_another(infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    app = ReviewApp(review_settings(infra, double_label_share=1.0))
    await app.start()
    try:
        async with client(app.url, infra.tokens.admin) as admin:
            for name, queues in ((f"lead-{unique}", [f"mine-{unique}"]),):
                response = await admin.post("/api/v1/users", json={"username": name, "password": "s3cret-pass",
                                                                   "role": "lead", "queues": queues})
                assert response.status_code == 201, response.text
        # A lead scoped to `mine` (a session user) may not resolve in `theirs`: checked on the use case directly.
        from flywheel.review.access import Actor, Forbidden
        from flywheel.review.queues import Verdict

        await send_events(producer, [predictive_request(f"theirs-{unique}", f"t-{unique}", row=0)])
        async with client(app.url, infra.tokens.reviewer) as http:
            await wait_open(http, f"theirs-{unique}", 1)
        lead = Actor(f"lead-{unique}", "lead", frozenset({f"mine-{unique}"}))
        item_id = await scalar(app, "SELECT id FROM items WHERE queue = %s", f"theirs-{unique}")
        with pytest.raises(Forbidden):
            await app.queues.resolve(lead, item_id, Verdict(label="fraud"))
        with pytest.raises(Forbidden):
            await app.queues.claim_next(lead, f"theirs-{unique}")
        assert (await app.reports.quality(lead)).queues == {}
    finally:
        await app.stop()


# -- the trainer hears the reviewer ----------------------------------------------------------------------------


async def test_a_reviewers_fraud_label_reaches_the_trainers_labels(review: Running, infra, registry_app,  # type: ignore[no-untyped-def]
                                                                    producer, tmp_path, unique: str) -> None:
    from flywheel.trainer.config import TrainerSettings
    from flywheel.trainer.main import TrainerApp
    from tests.service_helpers import shared_settings

    trainer = TrainerApp(TrainerSettings(
        **shared_settings(infra), db_schema=f"trainer_{unique}", consumer_group=f"trainer-{unique}",
        specs_dir=tmp_path, featurestore_addr="127.0.0.1:1", registry_addr=registry_app.address))
    await trainer.start()
    try:
        queue = f"fraud-{unique}"
        await send_events(producer, [predictive_request(queue, f"tr-{unique}", row=2)])
        await wait_open(review.reviewer, queue, 1)
        item = (await review.reviewer.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
        assert (await review.reviewer.post(f"/api/v1/items/{item['id']}/decision",
                                           json={"label": "fraud"})).status_code == 201

        async def stored() -> dict[str, Any] | None:
            async with trainer.db.connection() as conn:
                return await (await conn.execute(
                    "SELECT * FROM labels WHERE label_key = %s AND source = %s",
                    (f"tr-{unique}-t2", predictions_pb2.FEEDBACK_SOURCE_REVIEWER))).fetchone()
        label = await polling.eventually(stored, 60, "the reviewer's label in the trainer's labels")
        assert label["flag"] is True and label["value_kind"] == "flag"
        assert label["entity_keys"] == {"transaction_id": f"tr-{unique}-t2", "customer_id": "c-2"}
        assert label["request_id"] == f"tr-{unique}"
    finally:
        await trainer.stop()


# -- bad input ---------------------------------------------------------------------------------------------------


async def test_bad_input_is_a_4xx_with_a_json_error(review: Running, infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    queue, app_name = f"bad-{unique}", f"bad-app-{unique}"
    await send_events(producer, [predictive_request(queue, f"b-{unique}"), answer_request(app_name, f"ba-{unique}")])
    await wait_open(review.reviewer, queue, 1)
    await wait_open(review.reviewer, app_name, 1)
    http = review.reviewer
    item = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
    answer = (await http.post(f"/api/v1/queues/{app_name}/claim")).json()["item"]

    async def check(response: httpx.Response, status: int, words: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert words in response.json()["error"], response.json()

    decide = f"/api/v1/items/{item['id']}/decision"
    await check(await http.post(decide, json={"label": "maybe"}), 400, "label must be one of legit, fraud")
    await check(await http.post(decide, content=b"{not json", headers={"content-type": "application/json"}), 400,
                "JSON")
    await check(await http.post(decide, json={"label": 7}), 400, "label")
    await check(await http.post(f"/api/v1/items/{answer['id']}/decision", json={"action": "correct"}), 400,
                "corrected_completion is empty")
    await check(await http.post(f"/api/v1/items/{answer['id']}/decision", json={"action": "reject"}), 400,
                "needs a reason")
    await check(await http.post(f"/api/v1/items/{answer['id']}/decision", json={"label": "fraud"}), 400,
                "action must be one of approve, correct, reject")
    await check(await http.post("/api/v1/items/no-such-item/decision", json={"label": "fraud"}), 404, "no item")
    await check(await http.post("/api/v1/queues/no-such-queue/claim"), 404, "no queue")
    await check(await http.get("/api/v1/export", params={"format": "csv"}), 400, "format")
    await check(await review.lead.get("/api/v1/export", params={"since": "2026-02-01T00:00:00Z",
                                                                "until": "2026-01-01T00:00:00Z"}), 400, "before")
    assert (await http.post(decide, json={"label": "fraud"})).status_code == 201
    await check(await http.post(decide, json={"label": "fraud"}), 409, "decided this item already")
    await check(await http.post(f"/api/v1/items/{item['id']}/skip"), 409, "do not hold")
    async with client(review.url) as anonymous:
        await check(await anonymous.post(f"/api/v1/queues/{queue}/claim"), 401, "log in")
    async with client(review.url, "fwt_not-a-token") as unknown:
        await check(await unknown.get("/api/v1/queues"), 401, "unknown")
    async with client(review.url, infra.tokens.reader) as reader:
        await check(await reader.get("/api/v1/queues"), 403, "needs role reviewer, lead or admin")
    await check(await http.get("/api/v1/quality"), 403, "not a lead")
    await check(await http.get("/api/v1/export"), 403, "not a lead")
    await check(await http.post("/api/v1/users", json={"username": "x1", "password": "long enough",
                                                       "role": "reviewer"}), 403, "may not create")
    await check(await review.lead.post("/api/v1/users", json={"username": f"boss-{unique}", "password": "long enough",
                                                              "role": "admin"}), 403, "reviewers only")
    await check(await review.lead.post("/api/v1/users", json={"username": "X", "password": "long enough"}), 400,
                "user name")
    schema = (await http.get("/api/v1/openapi.json")).json()
    assert "/api/v1/items/{item_id}/decision" in schema["paths"]


# -- export and the command line ---------------------------------------------------------------------------------


async def test_export_filters_by_queue_reviewer_and_time(review: Running, infra, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    import io
    import json

    import pyarrow.parquet as pq

    queue = f"export-{unique}"
    await send_events(producer, [predictive_request(queue, f"e{i}-{unique}", row=0) for i in range(4)])
    await wait_open(review.reviewer, queue, 4)
    other_token = await create_token(infra, f"olga-{unique}", "reviewer")
    decided: list[dict[str, Any]] = []
    async with client(review.url, other_token) as olga:
        for http, label in ((review.reviewer, "fraud"), (olga, "legit"), (review.reviewer, "legit"), (olga, "fraud")):
            item = (await http.post(f"/api/v1/queues/{queue}/claim")).json()["item"]
            decided.append((await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": label})).json())
    times = [d["decision"]["decided_at"] for d in decided]

    async def export(**params: str) -> list[dict[str, Any]]:
        response = await review.lead.get("/api/v1/export", params={"queue": queue, **params})
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines()]

    everything = await export()
    assert [r["decision_id"] for r in everything] == [d["decision"]["id"] for d in decided]
    assert {r["reviewer"] for r in await export(reviewer=f"olga-{unique}")} == {f"olga-{unique}"}
    window = await export(since=times[1], until=times[3])  # [since, until)
    assert [r["decision_id"] for r in window] == [d["decision"]["id"] for d in decided[1:3]]
    assert all(r["final"] and r["queue"] == queue and r["kind"] == "predictive" for r in everything)
    assert everything[0]["content"]["prediction"]["label"] is True

    response = await review.lead.get("/api/v1/export", params={"queue": queue, "format": "parquet",
                                                               "reviewer": "reviewer"})
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    rows = pq.read_table(io.BytesIO(response.content)).to_pylist()
    assert [(r["reviewer"], r["label_flag"]) for r in rows] == [("reviewer", True), ("reviewer", False)]
    assert json.loads(rows[0]["entity_keys"])["transaction_id"] == f"{rows[0]['request_id']}-t0"


async def test_the_command_line_manages_users_and_exports(review: Running, infra, producer, unique: str,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from flywheel.review.cli import review as cli

    monkeypatch.setenv("FLYWHEEL_TOKEN", infra.tokens.admin)
    monkeypatch.setenv("COLUMNS", "250")  # tables at full width
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["--url", review.url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    # The CLI blocks on HTTP: run it beside the event loop that serves the app.
    created = await asyncio.to_thread(run, "user-create", f"cli-{unique}", "--role", "lead", "--queues", "fraud",
                                      "--password", "long enough pass")
    assert f"created lead cli-{unique}" in created
    assert f"cli-{unique}" in await asyncio.to_thread(run, "users")
    await send_events(producer, [predictive_request(f"cli-q-{unique}", f"cq-{unique}")])
    await wait_open(review.reviewer, f"cli-q-{unique}", 1)
    assert f"cli-q-{unique}" in await asyncio.to_thread(run, "queues")
    out = tmp_path / "all.jsonl"
    await asyncio.to_thread(run, "export", "--queue", f"cli-q-{unique}", "-o", str(out))
    assert out.exists() and out.read_text() == ""  # nothing decided in that queue yet
    result = await asyncio.to_thread(runner.invoke, cli, ["--url", review.url, "user-create", f"cli-{unique}",
                                                          "--password", "long enough pass"])
    assert result.exit_code != 0 and "409" in result.output and "exists already" in result.output
