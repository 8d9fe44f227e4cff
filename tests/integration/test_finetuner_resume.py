"""A fine-tuner process killed (SIGKILL) in the middle of a run: started again, it queues the run again and
resumes it from its newest checkpoint instead of starting over, then registers the adapter once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common import rpc
from flywheel.common.embedded import free_port
from flywheel.common.kafka import send_events
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.finetuner_helpers import (
    build_tiny_chat_llm,
    corrections,
    finetuner_settings,
    register_tiny_base,
    settings_env,
)
from tests.integration import registry_client

pytestmark = pytest.mark.integration

EPOCHS = 60
CHECKPOINT_EVERY = 10


def start(env: dict[str, str], log: Path) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "flywheel.finetuner"], env={**clean, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


async def serving(address: str, proc: subprocess.Popen, log: Path) -> None:
    async def check() -> bool:
        assert proc.poll() is None, f"the fine-tuner exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    await polling.eventually(check, timeout=90, what="the fine-tuner process serving", every=0.2)


async def test_a_killed_run_resumes_from_its_checkpoint(infra, registry_app, registry, producer,  # type: ignore[no-untyped-def]
                                                        tmp_path) -> None:
    base_name = f"tiny-resume-{uuid.uuid4().hex[:8]}"
    app = f"assistant-{uuid.uuid4().hex[:6]}"
    base = await register_tiny_base(registry, base_name, build_tiny_chat_llm(tmp_path / "base", seed=5))
    questions = [f"How long do I have to dispute payment {i}?" for i in range(6)]
    await send_events(producer, corrections(app, questions, "Within 120 days.", "Within 60 days.", model=base_name))
    port = free_port()
    settings = finetuner_settings(infra, registry_app.address, tmp_path / "work", grpc_port=port,
                                  checkpoint_every=CHECKPOINT_EVERY, batch_size=1)
    env, log = settings_env(settings), tmp_path / "finetuner.log"
    address = f"127.0.0.1:{port}"
    proc = start(env, log)
    try:
        await serving(address, proc, log)
        async with rpc.channel(address, default_timeout=30, auth=infra.tokens.auth("operator")) as channel:
            stub = pb_grpc.FinetunerServiceStub(channel)

            async def six() -> bool:
                try:
                    found = await stub.GetDataset(pb.GetDatasetRequest(application=app))
                except grpc.aio.AioRpcError:
                    return False
                return found.dataset.examples == 6

            await polling.eventually(six, what=f"{app}'s 6 examples")
            started = await stub.StartRun(pb.StartRunRequest(application=app, settings={"epochs": str(EPOCHS)}))
            run_id = started.run.run_id

            async def checkpointed() -> pb.Run | None:
                run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
                assert run.status != pb.RUN_STATUS_SUCCEEDED, "the run ended before it could be killed"
                return run if run.checkpoint_step >= CHECKPOINT_EVERY else None

            seen = await polling.eventually(checkpointed, what="a checkpoint", every=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        total = seen.total_steps
        assert total == EPOCHS * 5 and seen.step < total  # 6 examples: 5 train (batch 1), 1 eval
        assert list((tmp_path / "work" / "runs" / run_id / "checkpoints").glob("step-*")), "no checkpoint on disk"

        proc = start(env, log)
        await serving(address, proc, log)
        async with rpc.channel(address, default_timeout=30, auth=infra.tokens.auth("operator")) as channel:
            stub = pb_grpc.FinetunerServiceStub(channel)

            async def done() -> pb.Run | None:
                run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
                return run if run.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED) else None

            run = await polling.eventually(done, timeout=180, what="the resumed run finished")
            runs = (await stub.ListRuns(pb.ListRunsRequest(application=app))).runs
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert run.status == pb.RUN_STATUS_SUCCEEDED, f"{run.failure_reason}\n{log.read_text()[-4000:]}"
    assert run.attempts == 2 and [r.run_id for r in runs] == [run_id]
    assert seen.checkpoint_step <= run.resumed_from_step < total, (seen, run)
    assert run.resumed_from_step % 5 == 0  # a checkpoint's step: every 10 steps and at each epoch end (5 steps)
    assert run.step == total and [e.epoch for e in run.epochs] == list(range(1, EPOCHS + 1))
    assert "resuming from checkpoint" in log.read_text()
    versions = (await registry.ListModelVersions(rpb.ListModelVersionsRequest(
        model_name=base_name, tags={"run_id": run_id}))).model_versions
    assert [v.version for v in versions] == [run.registered_version]  # registered once
    version = (await registry.GetModelVersion(rpb.GetModelVersionRequest(
        ref=registry_client.ref(base_name, run.registered_version)))).model_version
    assert (version.lineage.base_model.name, version.lineage.base_model.version) == (base_name, base.version)
    assert version.metrics["eval_loss"] < version.metrics["eval_loss_base"]
