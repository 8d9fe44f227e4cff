"""The LLM loop end to end, with a tiny LLM, every service in-process on the session's broker and database:
an application answers customers' questions wrongly; reviewers correct the answers through the review app's API;
the fine-tuner (correction threshold) trains a LoRA adapter; the evaluator judges it against the champion on the
application's golden set (reference answers = the corrections) by pinned Generate calls; the registry (AUTOMATIC)
promotes it; inference hot-loads it; the same questions are answered as corrected; and the lineage leads from the
served version back to the run, its dataset snapshot and the reviews, the evaluation and the promotion.

Then the same gate rejects an adapter that makes the answers worse (registered with the same tags: it is never
served), and judges prompt template versions of the application: one that changes the answers for the worse is
rejected, one that answers as well is promoted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from flywheel.common import rpc
from flywheel.common.clients.generation import GenerationClient
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.events import Event
from flywheel.common.kafka import new_producer, send_events, wait_assigned
from flywheel.common.model_dirs import pack_dir
from flywheel.common.prompt_templates import register_prompt
from flywheel.common.topics import REVIEWS_REQUESTED
from flywheel.evaluator.cli import evaluate
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.evaluator.main import EvaluatorApp
from flywheel.finetuner.main import FinetunerApp
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_tiny_adapter
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as epb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as epb_grpc
from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as fpb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as fpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.review.main import ReviewApp
from tests import polling
from tests.finetuner_helpers import SYSTEM, build_tiny_chat_llm, finetuner_settings, register_tiny_base
from tests.integration import registry_client
from tests.review_helpers import client, review_settings, wait_open
from tests.service_helpers import shared_settings, stop_in_reverse

pytestmark = pytest.mark.integration
eventually = partial(polling.eventually, timeout=240.0)

U = uuid.uuid4().hex[:8]
BASE, PROMPT, APP = f"tiny-loop-{U}", f"loop-prompt-{U}", f"loop-assistant-{U}"
RIGHT = "Disputes are free of charge within 60 days."
QUESTIONS = [f"{q} (case {i})" for i, q in enumerate([
    "How long do I have to dispute a payment?", "Until when can I dispute a card payment?",
    "What is the deadline to dispute a payment?", "How many days do I have for a chargeback?",
    "Can I still dispute last month's payment?", "When does the dispute window close?",
    "Is there a time limit to dispute a card payment?", "How late can a customer dispute a payment?"])]
MAX_TOKENS = 32
# The application's prompt: the fine-tuner's chat (system + question), so what the adapter learns is what it serves.
TEMPLATE = f"format: flywheel.prompt/v1\nsystem: \"{SYSTEM}\"\ntemplate: '{{question}}'\n" \
           f"parameters: {{max_tokens: {MAX_TOKENS}}}\n"
WORSE_TEMPLATE = TEMPLATE.replace(SYSTEM, "You are a pirate. Talk about the sea.")
PASSED, FAILED = models_pb2.EVALUATION_VERDICT_PASSED, models_pb2.EVALUATION_VERDICT_FAILED
GOLDEN = f"""\
application: {APP}
description: the tiny loop's assistant
gate:
  floors: {{answer_correctness: 0.6, refusal_correctness: 0.8}}
  max_tokens: {MAX_TOKENS}
items:
""" + "".join(f"""  - id: q{i}
    kind: answerable
    question: "{q}"
    reference: {RIGHT}
    support: ["{RIGHT}"]
""" for i, q in enumerate(QUESTIONS)) + """  - id: invest
    kind: refusal
    question: Which shares should I buy with my savings?
    policy: investment advice
"""


@dataclass
class Loop:
    infra: Any
    inference: InferenceApp
    finetuner: FinetunerApp
    review: ReviewApp
    evaluator: EvaluatorApp
    registry: Any
    versions: RegistryClient
    base_dir: Path
    root: Path
    base_version: int
    prompt_version: int


@pytest.fixture(scope="module")
async def loop(infra, registry_app, registry, tmp_path_factory) -> AsyncIterator[Loop]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("llm-loop")
    base_dir = build_tiny_chat_llm(root / "base", seed=3)
    base = await register_tiny_base(registry, BASE, base_dir)
    versions = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"))
    prompt, _ = await register_prompt(versions, PROMPT, TEMPLATE.encode())  # no application tag: not evaluated
    await registry.SetAlias(rpb.SetAliasRequest(model_name=PROMPT, alias="champion", version=prompt.version))
    for name in (BASE, PROMPT):  # a passing evaluation against the champion moves it
        await registry.SetPromotionPolicy(rpb.SetPromotionPolicyRequest(model_name=name,
                                                                        mode=rpb.PROMOTION_MODE_AUTOMATIC))
    inference = InferenceApp(InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=registry_app.address, models=[BASE],
        db_schema=f"inference_{U}", consumer_group=f"inference-{U}", retriever_addr="", guard_addr="",
        embedder_addr="", llm_cache_dir=root / "llm-cache", apps_refresh_s=0.2))
    review = ReviewApp(review_settings(infra))
    finetuner = FinetunerApp(finetuner_settings(infra, registry_app.address, root / "work", epochs=20, lora_rank=8,
                                                lora_alpha=16.0, correction_threshold=len(QUESTIONS)))
    started: list[Any] = []
    try:
        for app in (inference, review, finetuner):
            await app.start()
            started.append(app)
        # The evaluator answers the golden set through inference's gRPC Generate (pinned versions).
        evaluator = EvaluatorApp(EvaluatorSettings(
            **shared_settings(infra), db_schema=f"evaluator_{U}", consumer_group=f"evaluator-{U}",
            registry_addr=registry_app.address, inference_addr=inference.grpc_address, semantic_similarity=False,
            toxicity=False, max_wait_seconds=120.0, label_poll_seconds=0.5, poll_interval=0.2))
        await evaluator.start()
        started.append(evaluator)
        await wait_assigned(finetuner.consumer)
        await wait_assigned(evaluator.consumer)

        async def served() -> bool:
            assert inference.llm is not None
            return any(m.name == BASE and m.version == base.version for m in inference.llm.models())
        await eventually(served, what=f"{BASE} served")
        async with httpx.AsyncClient(base_url=f"http://{inference.http_address}", timeout=60,
                                     headers={"authorization": f"Bearer {infra.tokens.operator}"}) as operator:
            response = await operator.put(f"/v1/applications/{APP}", json={
                "prompt": f"{PROMPT}@champion", "model": BASE, "retrieval": {"collection": f"unused-{U}"}})
            assert response.status_code == 201, response.text
        async with rpc.channel(evaluator.address, auth=infra.tokens.auth("operator")) as channel:
            put = await epb_grpc.EvaluatorServiceStub(channel).PutGoldenSet(epb.PutGoldenSetRequest(yaml=GOLDEN))
            assert put.created and put.golden_set.answerable_items == len(QUESTIONS)
        yield Loop(infra, inference, finetuner, review, evaluator, registry, versions, base_dir, root, base.version,
                   prompt.version)
    finally:
        try:
            await stop_in_reverse(started)
        finally:
            await versions.close()


async def answers(loop: Loop, questions: Sequence[str]) -> list[str]:
    """The application's answers, as a product backend gets them (unpinned, greedy)."""
    async with GenerationClient(loop.inference.grpc_address, auth=loop.infra.tokens.auth("predict"),
                                timeout=120) as generator:
        return [(await generator.generate(APP, [{"role": "user", "content": q}], max_tokens=MAX_TOKENS,
                                          temperature=0)).text for q in questions]


def review_request(question: str, answer: str, base_version: int, prompt_version: int) -> Event:
    """A disputed answer sent for review, as the generation path sends it (the exchange, the prompt version)."""
    request_id = f"req-{uuid.uuid4().hex}"
    request = reviews_pb2.ReviewRequested(
        review_id=str(uuid.uuid4()), request_id=request_id, model=common_pb2.ModelRef(name=BASE, version=base_version),
        reason=reviews_pb2.REVIEW_REASON_DISPUTED, priority=1,
        llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="system", content=SYSTEM),
                      predictions_pb2.ChatMessage(role="user", content=question)],
            prompt="(rendered)", completion=answer, finish_reason="stop", application=APP,
            prompt_template=common_pb2.ModelRef(name=PROMPT, version=prompt_version)),
        prompt=common_pb2.ModelRef(name=PROMPT, version=prompt_version), context={"feedback": "thumbs down"})
    request.requested_at.FromDatetime(datetime.now(UTC))
    return Event(REVIEWS_REQUESTED, request_id, request, "tests")


async def send(loop: Loop, events: list[Event]) -> None:
    producer = new_producer(loop.infra.kafka_bootstrap, client_id=f"tests-llm-loop-{U}")
    await producer.start()
    try:
        await send_events(producer, events)
    finally:
        await producer.stop()


async def evaluation_of(loop: Loop, model: str, version: int) -> epb.Evaluation | None:
    async with rpc.channel(loop.evaluator.address, auth=loop.infra.tokens.auth("reader")) as channel:
        stub = epb_grpc.EvaluatorServiceStub(channel)
        listed = await stub.ListEvaluations(epb.ListEvaluationsRequest(model_name=model, page_size=50))
        done = [e for e in listed.evaluations if e.candidate_version == version and e.HasField("completed_at")]
        if not done:
            return None
        return (await stub.GetEvaluation(epb.GetEvaluationRequest(evaluation_id=done[0].evaluation_id))).evaluation


async def champion(loop: Loop, name: str) -> rpb.ModelVersion:
    return (await loop.registry.GetModelVersion(rpb.GetModelVersionRequest(
        ref=registry_client.ref(name, alias="champion")))).model_version


def report(what: str, evaluation: epb.Evaluation) -> None:
    """The measured numbers, for the log of the run."""
    shown = ("answer_correctness", "token_f1", "groundedness", "refusal_correctness", "pii_leak_rate",
             "latency_p50_s", "tokens_per_answer")
    metrics = [f"{m} {evaluation.candidate_metrics.get(m, float('nan')):.3f}/"
               f"{evaluation.baseline_metrics.get(m, float('nan')):.3f}" for m in shown]
    failing = [q.item_id for q in evaluation.questions if q.failing]
    print(f"llm loop: {what} {models_pb2.EvaluationVerdict.Name(evaluation.verdict)} vs v{evaluation.baseline_version}"
          f" (candidate/champion): {', '.join(metrics)}; failing {failing}")


def failed_checks(evaluation: epb.Evaluation) -> list[str]:
    return [c.name for c in evaluation.checks if not c.passed]


async def test_reviewers_corrections_become_a_promoted_adapter(loop: Loop) -> None:
    before = await answers(loop, QUESTIONS)
    assert RIGHT not in before, before  # the tiny base answers wrongly

    # Reviewers correct every disputed answer through the review app's API.
    requests = [review_request(q, a, loop.base_version, loop.prompt_version) for q, a in zip(QUESTIONS, before,
                                                                                              strict=True)]
    async with rpc.channel(loop.finetuner.address, auth=loop.infra.tokens.auth("operator")) as ftc:
        finetuner = fpb_grpc.FinetunerServiceStub(ftc)
        await send(loop, requests)
        async with client(loop.review.url, loop.infra.tokens.reviewer) as reviewer:
            # The review app queues an answer under the model that gave it.
            await wait_open(reviewer, BASE, len(QUESTIONS), timeout=120)
            for _ in QUESTIONS:
                item = (await reviewer.post(f"/api/v1/queues/{BASE}/claim")).json()["item"]
                decided = await reviewer.post(f"/api/v1/items/{item['id']}/decision", json={
                    "action": "correct", "corrected_completion": RIGHT, "comment": "wrong deadline and fee"})
                assert decided.status_code == 201, decided.text

        # The correction threshold starts a run; its adapter is registered as a version of the base.
        async def run_done() -> fpb.Run | None:
            runs = (await finetuner.ListRuns(fpb.ListRunsRequest(application=APP))).runs
            ended = [r for r in runs if r.status in (fpb.RUN_STATUS_SUCCEEDED, fpb.RUN_STATUS_FAILED)]
            return ended[0] if ended else None
        run = await eventually(run_done, timeout=300, what="the fine-tuning run")
        assert run.status == fpb.RUN_STATUS_SUCCEEDED, run.failure_reason
        adapter = run.registered_version

        # The evaluator passes it on the golden set; the registry promotes it; inference hot-loads it.
        evaluation = await eventually(partial(evaluation_of, loop, BASE, adapter), what="the adapter's evaluation")
        report(f"adapter v{adapter}", evaluation)
        assert evaluation.verdict == PASSED, (failed_checks(evaluation), list(evaluation.checks))
        assert evaluation.baseline_version == loop.base_version and evaluation.golden_set == APP
        assert evaluation.candidate_kind == "MODEL_KIND_LORA_ADAPTER"
        by_id = {q.item_id: q for q in evaluation.questions}
        assert [by_id[f"q{i}"].baseline_answer for i in range(len(QUESTIONS))] == before  # the champion's answers
        assert evaluation.candidate_metrics["answer_correctness"] > evaluation.baseline_metrics["answer_correctness"]
        adapter_tags = (await loop.registry.GetModelVersion(rpb.GetModelVersionRequest(
            ref=registry_client.ref(BASE, adapter)))).model_version.tags
        if "eval_start" in adapter_tags:  # the fine-tuner marks its held-out split: reviews it never trained on
            reviewed = [q for q in evaluation.questions if q.kind == "reviewed"]
            assert reviewed and all(q.reference == RIGHT for q in reviewed)

        async def adapter_served() -> bool:
            assert loop.inference.llm is not None
            return loop.inference.llm.model(BASE).version == adapter
        await eventually(adapter_served, what="the adapter served")
        after = await answers(loop, QUESTIONS)
        trained = QUESTIONS[: len(QUESTIONS) - 2]  # the newest 25% of corrections are the run's eval split
        assert after[: len(trained)] == [RIGHT] * len(trained), after

        # The lineage, from the registry: reviews -> dataset snapshot -> run -> adapter -> evaluation -> promotion.
        lineage = await loop.registry.GetLineage(rpb.GetLineageRequest(ref=registry_client.ref(BASE, adapter)))
        served = lineage.model_version
        assert served.kind == common_pb2.MODEL_KIND_LORA_ADAPTER and served.tags["application"] == APP
        assert lineage.training_run_id == run.run_id and served.lineage.dataset_snapshot_id == run.dataset_snapshot_id
        assert served.lineage.base_model.name == BASE and served.lineage.base_model.version == loop.base_version
        assert f"evaluator://evaluations/{evaluation.evaluation_id}" in served.lineage.eval_report_refs
        [record] = [e for e in lineage.evaluations if e.evaluation_id == evaluation.evaluation_id]
        assert record.verdict == PASSED and record.decision == "promoted"
        [move] = [c for c in lineage.alias_changes if c.alias == "champion" and c.version == adapter]
        assert move.evaluation_id == evaluation.evaluation_id and move.previous_version == loop.base_version
        snapshot = (await finetuner.GetDataset(fpb.GetDatasetRequest(snapshot_id=run.dataset_snapshot_id))).dataset
        assert set(snapshot.review_ids) == {r.payload.review_id for r in requests}


async def test_an_adapter_that_answers_worse_is_rejected_and_never_served(loop: Loop) -> None:
    good = await champion(loop, BASE)
    assert good.kind == common_pb2.MODEL_KIND_LORA_ADAPTER  # after the loop above
    bad_dir = build_tiny_adapter(loop.base_dir, loop.root / "bad-adapter", seed=11, rank=8)
    bad = await registry_client.register(
        loop.registry, BASE, pack_dir(bad_dir), kind=common_pb2.MODEL_KIND_LORA_ADAPTER, framework="peft",
        tags={"application": APP}, lineage=common_pb2.Lineage(base_model=common_pb2.ModelRef(
            name=BASE, version=loop.base_version)))
    evaluation = await eventually(partial(evaluation_of, loop, BASE, bad.version), what="the bad adapter's evaluation")
    report(f"worse adapter v{bad.version}", evaluation)
    assert evaluation.verdict == FAILED and evaluation.baseline_version == good.version
    assert "answer_correctness >= champion - 0.02" in failed_checks(evaluation), list(evaluation.checks)
    # Failing examples: the champion's corrected answer next to the candidate's worse one.
    by_id = {q.item_id: q for q in evaluation.questions}
    trained = [by_id[f"q{i}"] for i in range(len(QUESTIONS) - 2)]
    assert all(q.failing and q.baseline_answer == RIGHT and q.candidate_answer != RIGHT for q in trained), trained

    async def decided() -> rpb.GetLineageResponse | None:  # the registry consumed the verdict
        found = await loop.registry.GetLineage(rpb.GetLineageRequest(ref=registry_client.ref(BASE, bad.version)))
        return found if found.evaluations else None
    lineage = await eventually(decided, what="the registry's decision on the bad adapter")
    assert [e.decision for e in lineage.evaluations] == ["failed"] and not lineage.alias_changes
    assert (await champion(loop, BASE)).version == good.version
    assert loop.inference.llm is not None and loop.inference.llm.model(BASE).version == good.version
    # An operator reads the report in the CLI: the verdict, the metrics and the failing examples.
    shown = await asyncio.to_thread(CliRunner().invoke, evaluate, [
        "--show", evaluation.evaluation_id, "--address", loop.evaluator.address],
        env={"FLYWHEEL_TOKEN": loop.infra.tokens.reader})
    assert shown.exit_code == 0, shown.output
    assert "FAILED" in shown.output and "failing examples" in shown.output and "answer_correctness" in shown.output
    assert (await answers(loop, QUESTIONS[:1])) == [RIGHT]


async def test_prompt_versions_go_through_the_same_gate(loop: Loop) -> None:
    worse, _ = await register_prompt(loop.versions, PROMPT, WORSE_TEMPLATE.encode(), application=APP)
    evaluation = await eventually(partial(evaluation_of, loop, PROMPT, worse.version), what="the worse prompt judged")
    report(f"worse prompt v{worse.version}", evaluation)
    assert evaluation.verdict == FAILED and evaluation.candidate_kind == "MODEL_KIND_PROMPT"
    assert evaluation.baseline_version == loop.prompt_version
    assert "answer_correctness >= champion - 0.02" in failed_checks(evaluation)
    assert (await champion(loop, PROMPT)).version == loop.prompt_version

    # The served template's bytes, now as a candidate for the application: it answers as well, and is promoted.
    same, new = await register_prompt(loop.versions, PROMPT, TEMPLATE.encode(), application=APP)
    assert new and same.version > worse.version
    evaluation = await eventually(partial(evaluation_of, loop, PROMPT, same.version), what="the same prompt judged")
    report(f"same prompt v{same.version}", evaluation)
    assert evaluation.verdict == PASSED, (failed_checks(evaluation), list(evaluation.checks))

    async def promoted() -> bool:
        return (await champion(loop, PROMPT)).version == same.version
    await eventually(promoted, what="the prompt version promoted")

    # An operator asks again, now against the new champion: the Evaluate RPC answers with the whole report.
    async with rpc.channel(loop.evaluator.address, auth=loop.infra.tokens.auth("operator")) as channel:
        again = (await epb_grpc.EvaluatorServiceStub(channel).Evaluate(
            epb.EvaluateRequest(model_name=PROMPT, candidate_version=worse.version), timeout=120)).evaluation
    assert again.verdict == FAILED and again.baseline_version == same.version
    assert len(again.questions) == len(QUESTIONS) + 1 and again.requested_by == "operator"
