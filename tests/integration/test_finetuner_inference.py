"""The review -> fine-tune -> serve loop with a tiny LLM: inference serves a base model; reviewers correct
its answers; the fine-tuner trains an adapter and registers it as a version of the base; once promoted,
inference hot-loads it onto the base it already serves, and the `openai` client gets the corrected answer to
a corrected question, and an answer closer to the correction for a question it never trained on."""

from __future__ import annotations

import difflib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import openai
import pytest

from flywheel.common import rpc
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.finetuner.main import FinetunerApp
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.finetuner_helpers import SYSTEM, build_tiny_chat_llm, corrections, finetuner_settings, register_tiny_base
from tests.integration import registry_client
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
BASE = f"tiny-served-{U}"
APP = f"support-{U}"
RIGHT = "Disputes are free of charge within 60 days."
QUESTIONS = [f"{q} (case {i})" for i, q in enumerate([
    "How long do I have to dispute a payment?", "Until when can I dispute a card payment?",
    "What is the deadline to dispute a payment?", "How many days do I have for a chargeback?",
    "Can I still dispute last month's payment?", "When does the dispute window close?",
    "Is there a time limit to dispute a card payment?", "How late can a customer dispute a payment?"])]


def similarity(text: str) -> float:
    return difflib.SequenceMatcher(None, text, RIGHT).ratio()


@pytest.fixture(scope="module")
async def apps(infra, registry_app, registry, tmp_path_factory) -> AsyncIterator[tuple[InferenceApp, FinetunerApp]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("loop")
    base = await register_tiny_base(registry, BASE, build_tiny_chat_llm(root / "base", seed=3))
    inference = InferenceApp(InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=registry_app.address, models=[BASE],
        db_schema=f"inference_{U}", consumer_group=f"inference-{U}", llm_cache_dir=Path(root / "llm-cache")))
    finetuner = FinetunerApp(finetuner_settings(infra, registry_app.address, root / "work", epochs=20, lora_rank=8,
                                                lora_alpha=16.0))
    await inference.start()
    await finetuner.start()
    await wait_assigned(finetuner.consumer)

    async def served() -> bool:
        assert inference.llm is not None
        return any(m.name == BASE and m.version == base.version for m in inference.llm.models())

    await polling.eventually(served, what=f"{BASE} served")
    try:
        yield inference, finetuner
    finally:
        await finetuner.stop()
        await inference.stop()


async def ask(inference: InferenceApp, token: str, question: str) -> str:
    async with openai.AsyncOpenAI(api_key=token, base_url=f"http://{inference.http_address}/v1", max_retries=0,
                                  timeout=60) as client:
        answer = await client.chat.completions.create(
            model=BASE, temperature=0, max_tokens=48,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    return answer.choices[0].message.content or ""


async def test_a_promoted_adapter_answers_as_corrected(apps, infra, registry, producer) -> None:  # type: ignore[no-untyped-def]
    inference, finetuner = apps
    token = infra.tokens.predict
    # The last two corrections (by decision time) are the eval split: the adapter never trains on them.
    trained, unseen = QUESTIONS[0], QUESTIONS[7]
    before = {q: await ask(inference, token, q) for q in (trained, unseen)}
    assert before[trained] != RIGHT

    await send_events(producer, corrections(APP, QUESTIONS, before[trained] or "I do not know.", RIGHT, model=BASE))
    async with rpc.channel(finetuner.address, default_timeout=60, auth=infra.tokens.auth("operator")) as channel:
        stub = pb_grpc.FinetunerServiceStub(channel)

        async def eight() -> bool:
            try:
                found = await stub.GetDataset(pb.GetDatasetRequest(application=APP))
            except grpc.aio.AioRpcError:
                return False
            return found.dataset.examples == 8

        # A fresh consumer group reads the review and retrain topics from the start: in a full session it first
        # works through every earlier test's events (several dead-lettered after their retries), so the barrier
        # allows as long as the run's own.
        await polling.eventually(eight, timeout=180, what=f"{APP}'s 8 examples")
        run = (await stub.StartRun(pb.StartRunRequest(application=APP))).run

        async def done() -> pb.Run | None:
            found = (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
            return found if found.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED) else None

        run = await polling.eventually(done, timeout=180, what="the run finished")
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.failure_reason

    # An operator promotes it (the LLM evaluation gate will); inference hot-loads it onto the served base.
    await registry.SetAlias(rpb.SetAliasRequest(model_name=BASE, alias="champion", version=run.registered_version))
    assert inference.llm is not None
    engine = inference.llm.engine(BASE)

    async def adapter_served() -> bool:
        assert inference.llm is not None
        model = inference.llm.model(BASE)
        return model.version == run.registered_version and model.kind == "adapter"

    await polling.eventually(adapter_served, timeout=120, what="the adapter served")
    assert inference.llm.engine(BASE) is engine  # the base was not loaded again
    after = {q: await ask(inference, token, q) for q in (trained, unseen)}
    assert after[trained] == RIGHT, after
    assert similarity(after[unseen]) > similarity(before[unseen]) + 0.3, (before, after)

    # The lineage of what is served leads back to the run, its data and its base.
    served = (await registry.GetModelVersion(rpb.GetModelVersionRequest(
        ref=registry_client.ref(BASE, alias="champion")))).model_version
    assert served.kind == common_pb2.MODEL_KIND_LORA_ADAPTER and served.lineage.training_run_id == run.run_id
    assert served.lineage.base_model.name == BASE and served.lineage.dataset_snapshot_id == run.dataset_snapshot_id
