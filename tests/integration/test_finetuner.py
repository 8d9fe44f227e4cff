"""The fine-tuner on the embedded broker and database with the real registry and a tiny LLM built from a
config: reviewed answers become a deduplicated, redacted dataset; a correction threshold, a retrain request
and an operator start runs (one per application at a time: requests coalesce); a run registers a LoRA adapter
as a version of its base model with lineage and metrics, and the adapter learned the corrections; bad
requests and roles get clear statuses."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from flywheel.common import rpc
from flywheel.common.events import Event
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.model_building import model_building
from flywheel.common.model_dirs import pack_dir, unpack
from flywheel.common.topics import PREDICTIONS_LOGGED, RETRAIN_REQUESTS
from flywheel.finetuner.lora import Example, encode_example, eval_loss, load_base
from flywheel.finetuner.main import FinetunerApp
from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.finetuner_helpers import (
    SYSTEM,
    build_tiny_chat_llm,
    corrections,
    finetuner_settings,
    register_tiny_base,
    reviewed,
)
from tests.integration import registry_client

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
BASE = f"tiny-chat-{U}"
THRESHOLD = 8
WRONG = "You can dispute a card payment within 120 days."
RIGHT = "Disputes are free of charge within 60 days."
QUESTIONS = [f"{q} (case {i})" for i, q in enumerate([
    "How long do I have to dispute a payment?", "Until when can I dispute a card payment?",
    "What is the deadline to dispute a payment?", "How many days do I have for a chargeback?",
    "Can I still dispute last month's payment?", "When does the dispute window close?",
    "Is there a time limit to dispute a card payment?", "How late can a customer dispute a payment?"])]


@dataclass
class Stack:
    app: FinetunerApp
    stub: pb_grpc.FinetunerServiceStub
    channel: grpc.aio.Channel
    registry: Any
    producer: Any
    infra: Any
    base_dir: Path
    base_version: int


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_llm(tmp_path_factory.mktemp("tiny-base") / "base", seed=3)


@pytest.fixture(scope="module")
async def stack(infra, registry_app, registry, producer, base_dir, tmp_path_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    base = await register_tiny_base(registry, BASE, base_dir)
    settings = finetuner_settings(infra, registry_app.address, tmp_path_factory.mktemp("finetuner-work"),
                                  correction_threshold=THRESHOLD)
    app = FinetunerApp(settings)
    await app.start()
    await wait_assigned(app.consumer)
    channel = rpc.channel(app.address, default_timeout=60, auth=infra.tokens.auth("operator"))
    try:
        yield Stack(app, pb_grpc.FinetunerServiceStub(channel), channel, registry, producer, infra, base_dir,
                    base.version)
    finally:
        await channel.close()
        await app.stop()


async def dataset(stack: Stack, application: str) -> pb.Dataset | None:
    try:
        return (await stack.stub.GetDataset(pb.GetDatasetRequest(application=application))).dataset
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def runs_of(stack: Stack, application: str) -> list[pb.Run]:
    return list((await stack.stub.ListRuns(pb.ListRunsRequest(application=application))).runs)


async def finished(stack: Stack, run_id: str, timeout: float = 120.0) -> pb.Run:
    async def done() -> pb.Run | None:
        run = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        return run if run.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED) else None

    async def state() -> str:
        return str((await stack.stub.GetRun(pb.GetRunRequest(run_id=run_id))).run)

    return await polling.eventually(done, timeout=timeout, what=f"run {run_id} finished", state=state)


def examples(questions: list[str], target: str) -> list[Example]:
    return [Example((("system", SYSTEM), ("user", q)), "", target) for q in questions]


def answer_loss(base_dir: Path, items: list[Example], adapter_dir: Path | None = None) -> float:
    """Mean answer-token loss of the base (or the base with the adapter) on `items`."""
    model, tokenizer = load_base(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        with model_building():
            model = PeftModel.from_pretrained(model, str(adapter_dir))
    encoded = [encode_example(tokenizer, e, 128) for e in items]
    loss = eval_loss(model, encoded, tokenizer.pad_token_id, 4)
    assert loss is not None
    return loss


async def test_reviewed_answers_become_a_deduplicated_redacted_dataset(stack: Stack) -> None:
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    card, email = "4111 1111 1111 1111", "jane.doe@example.com"
    correction = reviewed(app, f"My card {card} was charged twice, what now?", WRONG,
                          corrected=f"Write to {email} or dispute it in the app.")
    duplicate = reviewed(app, f"My card {card} was charged twice, what now?", "Call us.",
                         corrected=f"Write to {email} or dispute it in the app.")
    approval = reviewed(app, "Can I freeze my card?", "Yes, in the app, at no cost.",
                        decision=reviews_pb2.REVIEW_DECISION_APPROVED)
    rejection = reviewed(app, "Tell me a joke", "No.", decision=reviews_pb2.REVIEW_DECISION_REJECTED)
    late = reviewed(app, "Are transfers above the daily limit possible?", "No.",
                    corrected="Yes, with a second confirmation by text message.")
    # The decision of `late` arrives before its answer under review (two topics, either order).
    await send_events(stack.producer, [late[1], *correction, *duplicate, *approval, *rejection])
    await send_events(stack.producer, [late[0]])

    async def complete() -> pb.Dataset | None:
        found = await dataset(stack, app)
        return found if found is not None and found.examples == 3 and found.rejected == 1 \
            and found.duplicates == 1 else None

    got = await polling.eventually(complete, what=f"{app}'s dataset complete", state=lambda: dataset(stack, app))
    assert (got.corrections, got.approvals, got.reviews) == (2, 1, 4)
    assert dict(got.redactions) == {"card_number": 2, "email": 2}  # the answer and the decision of both copies
    assert got.train_examples + got.eval_examples == 3 and got.eval_examples == 1  # eval_fraction 0.25, at least 1
    assert got.new_corrections == 2 and got.correction_threshold == THRESHOLD and not got.last_run_id
    assert len(got.snapshot_id) == 64
    # No raw PII in any table of the fine-tuner's schema.
    async with stack.app.db.connection() as conn:
        for table in ("review_items", "review_decisions", "examples"):
            rows = await (await conn.execute(f"SELECT * FROM {table} WHERE row_to_json({table})::text LIKE %s "
                                             f"OR row_to_json({table})::text LIKE %s",
                                             (f"%{email}%", f"%{card}%"))).fetchall()
            assert not rows, f"raw PII in {table}: {rows}"
        stored = await (await conn.execute("SELECT messages, target FROM examples WHERE application = %s AND"
                                           " target LIKE 'Write to%%'", (app,))).fetchone()
    assert stored is not None and stored["target"] == "Write to [EMAIL] or dispute it in the app."
    assert stored["messages"] == [["system", SYSTEM], ["user", "My card [CARD_NUMBER] was charged twice, what now?"]]
    # Delivered again: nothing changes (processed event ids, and the review's first decision is kept).
    await send_events(stack.producer, [*correction, *approval])
    await send_events(stack.producer, [reviewed(app, "Can I freeze my card?", "Yes, in the app, at no cost.",
                                                corrected="Freezing is free.")[0]])
    await asyncio.sleep(0)  # nothing to wait for positively; the next GetDataset is what must hold
    again = await dataset(stack, app)
    assert again is not None and (again.examples, again.duplicates) == (3, 1)


async def test_the_correction_threshold_starts_a_run_that_registers_an_adapter_which_learned(stack: Stack) -> None:
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    # The answers name the base model that gave them: the application resolves to it through its reviews.
    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    await send_events(stack.producer, corrections(app, QUESTIONS, WRONG, RIGHT, model=BASE, start=start))

    async def one_run() -> list[pb.Run]:
        return await runs_of(stack, app)

    [run] = await polling.eventually(one_run, what=f"a run of {app}")
    run = await finished(stack, run.run_id)
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    assert run.reason == models_pb2.RETRAIN_REASON_REVIEWS
    assert run.requested_by.startswith("flywheel/finetuner") and f"{THRESHOLD} new corrections" in run.requested_by
    assert (run.model_name, run.base.name, run.base.version, run.parent.version) == \
        (BASE, BASE, stack.base_version, stack.base_version)
    assert (run.train_examples, run.eval_examples, run.reviews) == (6, 2, 8)
    assert run.step == run.total_steps == 6 * 2 and run.attempts == 1 and run.resumed_from_step == 0
    assert [e.epoch for e in run.epochs] == list(range(1, 7))
    metrics = dict(run.metrics)
    assert metrics["eval_loss"] < metrics["eval_loss_base"]
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    assert run.epochs[-1].train_loss < run.epochs[0].train_loss

    # The adapter: a version of the base model, kind adapter, with lineage and the run's metrics.
    version = (await stack.registry.GetModelVersion(rpb.GetModelVersionRequest(
        ref=registry_client.ref(BASE, run.registered_version)))).model_version
    assert version.kind == common_pb2.MODEL_KIND_LORA_ADAPTER and version.framework == "peft"
    lineage = version.lineage
    assert (lineage.base_model.name, lineage.base_model.version) == (BASE, stack.base_version)
    assert lineage.parent_version == stack.base_version and lineage.training_run_id == run.run_id
    assert lineage.dataset_snapshot_id == run.dataset_snapshot_id and lineage.code_version
    assert version.tags["run_id"] == run.run_id and version.tags["application"] == app
    assert version.tags["reviews"] == "8"
    # The eval split is the corrections decided at +6 and +7 minutes: none from its start on was trained on.
    assert datetime.fromisoformat(version.tags["eval_start"]) == start + timedelta(minutes=6)
    for name in ("train_loss", "eval_loss", "eval_loss_base", "perplexity_before", "perplexity_after"):
        assert version.metrics[name] == pytest.approx(metrics[name])
    assert "champion" not in version.aliases  # promotion is the evaluation gate's decision

    # The snapshot in lineage lists the reviews it was made of.
    snap = (await stack.stub.GetDataset(pb.GetDatasetRequest(snapshot_id=run.dataset_snapshot_id))).dataset
    assert (snap.application, snap.examples, snap.train_examples, snap.eval_examples) == (app, 8, 6, 2)
    assert len(set(snap.review_ids)) == 8
    now = await dataset(stack, app)
    assert now is not None and now.last_run_id == run.run_id and now.new_corrections == 0
    assert now.last_snapshot_id == run.dataset_snapshot_id == now.snapshot_id

    # It learned them: the adapter, loaded by PEFT on the base as inference does, answers the held-out
    # questions with the correction at a lower loss than the base, and the wrong answer at a higher one.
    data = b"".join([c.chunk async for c in stack.registry.DownloadArtifact(rpb.DownloadArtifactRequest(
        ref=registry_client.ref(BASE, run.registered_version))) if c.WhichOneof("part") == "chunk"])
    adapter = unpack(data, stack.base_dir.parent / "unpacked")
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    held_out = QUESTIONS[6:]
    assert answer_loss(stack.base_dir, examples(held_out, RIGHT), adapter) < \
        answer_loss(stack.base_dir, examples(held_out, RIGHT))
    assert answer_loss(stack.base_dir, examples(QUESTIONS, RIGHT), adapter) < \
        answer_loss(stack.base_dir, examples(QUESTIONS, WRONG), adapter)


async def test_start_run_checks_roles_and_input(stack: Stack, infra, registry) -> None:  # type: ignore[no-untyped-def]
    async def status(request: pb.StartRunRequest, role: str | None = "operator") -> tuple[grpc.StatusCode, str]:
        auth = infra.tokens.auth(role) if role else None
        async with rpc.channel(stack.app.address, default_timeout=30, auth=auth) as channel:
            try:
                await pb_grpc.FinetunerServiceStub(channel).StartRun(request)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    app = f"assistant-{uuid.uuid4().hex[:6]}"
    assert (await status(pb.StartRunRequest(application=app), None))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await status(pb.StartRunRequest(application=app), "reader"))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert (await status(pb.StartRunRequest(application=app), "service"))[0] == grpc.StatusCode.PERMISSION_DENIED
    code, details = await status(pb.StartRunRequest(application=app))
    assert code == grpc.StatusCode.NOT_FOUND and f"no application or model {app!r}" in details, details
    code, details = await status(pb.StartRunRequest(application="  "))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "application is empty" in details
    code, details = await status(pb.StartRunRequest(application=BASE, settings={"rnak": "4"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown fine-tuning setting 'rnak'" in details
    code, details = await status(pb.StartRunRequest(application=BASE, settings={"epochs": "many"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "epochs='many'" in details
    code, details = await status(pb.StartRunRequest(application=BASE, settings={"learning_rate": "3"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "learning_rate must be in (0, 1)" in details
    # A model the registry knows, but no reviewed answer of it yet.
    code, details = await status(pb.StartRunRequest(application=BASE))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no examples yet" in details, details
    # A predictive model: the trainer's, not the fine-tuner's.
    predictive = f"scorer-{U}"
    v = await registry_client.register(registry, predictive, b"weights")
    await registry.SetAlias(rpb.SetAliasRequest(model_name=predictive, alias="champion", version=v.version))
    code, details = await status(pb.StartRunRequest(application=predictive))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "predictive model" in details, details
    # Reading is open to readers; unknown runs and datasets are NOT_FOUND.
    async with rpc.channel(stack.app.address, default_timeout=30, auth=infra.tokens.auth("reader")) as channel:
        reader = pb_grpc.FinetunerServiceStub(channel)
        for call in (reader.GetRun(pb.GetRunRequest(run_id="nope")),
                     reader.GetDataset(pb.GetDatasetRequest(application=app)),
                     reader.GetDataset(pb.GetDatasetRequest(snapshot_id="0" * 64))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        await reader.ListRuns(pb.ListRunsRequest())


async def test_retrain_requests_start_runs_and_requests_coalesce(stack: Stack) -> None:
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    await send_events(stack.producer, corrections(app, QUESTIONS[:3], WRONG, RIGHT, model=BASE))

    async def three() -> bool:
        found = await dataset(stack, app)
        return found is not None and found.examples == 3

    await polling.eventually(three, what=f"{app}'s 3 examples")

    def request(request_id: str, kind: int = common_pb2.MODEL_KIND_LLM, **fields: Any) -> Event:
        message = models_pb2.RetrainRequested(request_id=request_id, model_name=app, kind=kind,  # type: ignore[arg-type]
                                              reason=models_pb2.RETRAIN_REASON_PERFORMANCE, drift_event_id="drift-7",
                                              **fields)
        return Event(RETRAIN_REQUESTS, app, message, "flywheel/monitor")

    # While no run can start (the scheduler is paused), every request for the application joins the one
    # queued run: a second retrain request, an operator's StartRun; a request delivered twice counts once,
    # one for a predictive model is not the fine-tuner's.
    await stack.app.finetuner.scheduler.stop()
    try:
        first = f"rr-{uuid.uuid4().hex[:8]}"
        predictive = request(f"rr-{uuid.uuid4().hex[:8]}", kind=common_pb2.MODEL_KIND_PREDICTIVE)
        await send_events(stack.producer, [request(first, parameters={"epochs": "3"}),
                                           request(f"rr-{uuid.uuid4().hex[:8]}"), request(first), predictive])

        async def joined() -> pb.Run | None:
            runs = await runs_of(stack, app)
            return runs[0] if len(runs) == 1 and runs[0].coalesced_requests == 1 else None

        run = await polling.eventually(joined, what="the second request joined the queued run",
                                       state=lambda: runs_of(stack, app))
        started = await stack.stub.StartRun(pb.StartRunRequest(application=app, settings={"epochs": "9"}))
        assert started.coalesced and started.run.run_id == run.run_id and started.run.coalesced_requests == 2
    finally:
        stack.app.finetuner.scheduler.start()
    run = await finished(stack, run.run_id)
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason
    assert (run.reason, run.retrain_request_id, run.drift_event_id, run.requested_by) == \
        (models_pb2.RETRAIN_REASON_PERFORMANCE, first, "drift-7", "flywheel/monitor")
    assert run.settings["epochs"] == "3" and len(run.epochs) == 3  # the first request's settings
    assert len(await runs_of(stack, app)) == 1
    version = (await stack.registry.GetModelVersion(rpb.GetModelVersionRequest(
        ref=registry_client.ref(BASE, run.registered_version)))).model_version
    assert (version.lineage.retrain_request_id, version.lineage.drift_event_id) == (first, "drift-7")


async def test_a_retrain_request_before_any_review_waits_for_the_data(stack: Stack) -> None:
    """The monitor's quality alert comes before reviewers have corrected anything: its retrain request is kept
    (not dead-lettered) and becomes a run, with its ids, once the first examples arrive (below the threshold)."""
    app = f"early-{uuid.uuid4().hex[:6]}"
    answered = predictions_pb2.PredictionLogged(
        request_id=f"req-{uuid.uuid4().hex}", model=common_pb2.ModelRef(name=BASE, version=stack.base_version),
        arm=predictions_pb2.PREDICTION_ARM_CHAMPION, llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="user", content=QUESTIONS[0])], prompt="(rendered)",
            completion=WRONG, finish_reason="stop", application=app))
    answered.timestamp.GetCurrentTime()
    request_id = f"rr-{uuid.uuid4().hex[:8]}"
    request = models_pb2.RetrainRequested(
        request_id=request_id, model_name=app, kind=common_pb2.MODEL_KIND_LORA_ADAPTER,
        reason=models_pb2.RETRAIN_REASON_PERFORMANCE, drift_event_id="drift-early", parameters={"epochs": "1"})
    # The logged answer names the application's model (so the request resolves); then the request.
    await send_events(stack.producer, [Event(PREDICTIONS_LOGGED, answered.request_id, answered, "tests")])
    await polling.eventually(lambda: stack.app.finetuner.store.latest_model(app), what=f"{app}'s model known")
    await send_events(stack.producer, [Event(RETRAIN_REQUESTS, app, request, "flywheel/monitor")])

    async def waiting() -> bool:
        async with stack.app.db.connection() as conn:
            return bool(await (await conn.execute("SELECT 1 FROM waiting_requests WHERE request_id = %s",
                                                  (request_id,))).fetchone())

    await polling.eventually(waiting, what=f"retrain request {request_id} waiting")
    assert not await runs_of(stack, app)

    await send_events(stack.producer, corrections(app, QUESTIONS[:2], WRONG, RIGHT, model=BASE))  # < THRESHOLD

    async def started() -> pb.Run | None:
        runs = await runs_of(stack, app)
        return runs[0] if runs else None

    run = await polling.eventually(started, what=f"{app}'s run from the waiting request")
    assert (run.retrain_request_id, run.drift_event_id, run.reason, run.settings["epochs"]) == \
        (request_id, "drift-early", models_pb2.RETRAIN_REASON_PERFORMANCE, "1")
    assert not await waiting()
    run = await finished(stack, run.run_id)
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason


async def test_a_retrain_request_for_an_unknown_application_is_dead_lettered(stack: Stack) -> None:
    from tests.kafka_helpers import header, read_records

    request_id = f"rr-{uuid.uuid4().hex[:8]}"
    app = f"ghost-{uuid.uuid4().hex[:6]}"
    await send_events(stack.producer, [Event(RETRAIN_REQUESTS, app, models_pb2.RetrainRequested(
        request_id=request_id, model_name=app, kind=common_pb2.MODEL_KIND_LLM), "tests")])

    def mine(records: list[Any]) -> list[Any]:
        return [r for r in records if r.key == app.encode()]

    records = await read_records(stack.infra.kafka_bootstrap, RETRAIN_REQUESTS.dlq, until=lambda rs: bool(mine(rs)))
    error = header(mine(records)[0], "dlq_error")
    assert f"no application or model {app!r}" in error, error
    assert not await runs_of(stack, app)


def test_tiny_base_is_deterministic(base_dir: Path, tmp_path: Path) -> None:
    """The fixture's model: the same config and seed give the same weights (the tests above rely on it)."""
    again = build_tiny_chat_llm(tmp_path / "again", seed=3)
    a, _ = load_base(base_dir)
    b, _ = load_base(again)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert pack_dir(base_dir) == pack_dir(again)


async def flywheel_finetune(stack: Stack, *args: str) -> tuple[int, str]:
    """`flywheel finetune` as an operator runs it (FLYWHEEL_TOKEN: the session's operator token)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.common.cli", "finetune", "--address", stack.app.address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "FLYWHEEL_TOKEN": stack.infra.tokens.operator})
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_the_cli_starts_follows_and_describes(stack: Stack) -> None:
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    await send_events(stack.producer, corrections(app, QUESTIONS[:4], WRONG, RIGHT, model=BASE))

    async def four() -> bool:
        found = await dataset(stack, app)
        return found is not None and found.examples == 4

    await polling.eventually(four, what=f"{app}'s 4 examples")
    code, out = await flywheel_finetune(stack, app, "--dataset")
    assert code == 0 and "corrections" in out and "4" in out and "threshold" in out, out
    code, out = await flywheel_finetune(stack, app, "--wait", "--set", "epochs=2", "--set", "rank=2")
    assert code == 0, out
    [run] = await runs_of(stack, app)
    assert f"run {run.run_id} queued" in out and "succeeded" in out and "eval_loss" in out, out
    assert f"registered {BASE}:{run.registered_version}" in out and run.settings["rank"] == "2", out
    code, out = await flywheel_finetune(stack, "--list", app)
    assert code == 0 and run.run_id in out and "succeeded" in out, out
    code, out = await flywheel_finetune(stack, f"ghost-{uuid.uuid4().hex[:6]}", "--wait")
    assert code == 2 and "NOT_FOUND" in out and "no application or model" in out and "Traceback" not in out, out
    code, out = await flywheel_finetune(stack, app, "--set", "rank")
    assert code == 2 and "is not KEY=VALUE" in out, out


async def test_a_run_stopped_with_the_service_is_queued_again_and_resumes(stack: Stack) -> None:
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    await send_events(stack.producer, corrections(app, QUESTIONS[:5], WRONG, RIGHT, model=BASE))

    async def five() -> bool:
        found = await dataset(stack, app)
        return found is not None and found.examples == 5

    await polling.eventually(five, what=f"{app}'s 5 examples")
    run = (await stack.stub.StartRun(pb.StartRunRequest(
        application=app, settings={"epochs": "60", "batch_size": "1", "checkpoint_every": "10"}))).run

    async def checkpointed() -> pb.Run | None:
        found = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
        assert found.status != pb.RUN_STATUS_SUCCEEDED, "the run ended before the service stopped"
        return found if found.checkpoint_step >= 10 else None

    await polling.eventually(checkpointed, what="a checkpoint", every=0.02)
    await stack.app.finetuner.stop()  # what SIGTERM does: the scheduler and its runs stop
    try:
        stopped = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
        assert stopped.status == pb.RUN_STATUS_QUEUED, stopped
        assert f"resumes from checkpoint step {stopped.checkpoint_step}" in stopped.stage, stopped.stage
    finally:
        stack.app.finetuner.scheduler.start()
    done = await finished(stack, run.run_id)
    assert done.status == pb.RUN_STATUS_SUCCEEDED, done.failure_reason
    assert done.attempts == 2 and stopped.checkpoint_step <= done.resumed_from_step < done.total_steps
    assert done.step == done.total_steps == 60 * 4 and len(done.epochs) == 60
