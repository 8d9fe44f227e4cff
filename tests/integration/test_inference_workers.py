"""`workers > 1`: `python -m flywheel.inference` supervises worker processes that share the gRPC and HTTP
ports (SO_REUSEPORT), each with its own model copy and prediction logger; the supervisor sums their
metrics and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import numpy as np
import psutil
import pytest

from flywheel.common.embedded import free_port
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.events.v1 import predictions_pb2
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.integration import registry_client
from tests.kafka_helpers import read_records

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
MODEL = f"workers-{U}"


def metrics(port: int) -> dict[str, float]:
    import urllib.request

    values: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                values[sample] = float(value)
    return values


@pytest.fixture(scope="module")
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


@pytest.fixture(scope="module")
async def supervisor(infra, registry, registry_app, ports,  # type: ignore[no-untyped-def]
                     tmp_path_factory) -> AsyncIterator[subprocess.Popen[bytes]]:
    mv = await registry_client.register(registry, MODEL, build_predictive_artifact(
        n_numeric=3, hidden=(4,), constant=0.25, name=MODEL))
    await registry.SetAlias(rpb.SetAliasRequest(model_name=MODEL, alias="champion", version=mv.version))
    grpc_port, http_port, metrics_port = ports
    env = {**os.environ, "FLYWHEEL_KAFKA_BOOTSTRAP": infra.kafka_bootstrap, "FLYWHEEL_DATABASE_URL": infra.database_url,
           "FLYWHEEL_HOME": str(infra.home), "FLYWHEEL_TOKEN": infra.tokens.service,
           "FLYWHEEL_REGISTRY_ADDR": registry_app.address, "FLYWHEEL_INFERENCE_WORKERS": "2",
           "FLYWHEEL_INFERENCE_GRPC_PORT": str(grpc_port), "FLYWHEEL_INFERENCE_HTTP_PORT": str(http_port),
           "FLYWHEEL_INFERENCE_METRICS_PORT": str(metrics_port), "FLYWHEEL_INFERENCE_MODELS": json.dumps([MODEL]),
           "FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT": "true", "FLYWHEEL_INFERENCE_LLM_ENABLED": "false",
           "FLYWHEEL_INFERENCE_DB_SCHEMA": f"inference_workers_{U}",
           "FLYWHEEL_INFERENCE_CONSUMER_GROUP": f"inference-workers-{U}", "FLYWHEEL_LOG_LEVEL": "WARNING"}
    log = (tmp_path_factory.mktemp("workers") / "supervisor.log").open("wb")
    process = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-m", "flywheel.inference"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def serving() -> bool:
        assert process.poll() is None, f"the supervisor exited with {process.returncode}"
        try:
            return (await asyncio.to_thread(metrics, metrics_port)).get("flywheel_inference_serving") == 2
        except OSError:
            return False
    await polling.eventually(serving, timeout=120, what="both workers serving")
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def test_workers_share_the_ports_log_every_prediction_and_sum_their_metrics(  # type: ignore[no-untyped-def]
        supervisor, ports, infra) -> None:
    grpc_port, http_port, metrics_port = ports
    workers = psutil.Process(supervisor.pid).children()
    assert len(workers) == 2
    ids = [f"w-{U}-{i}" for i in range(24)]
    for i, rid in enumerate(ids[:16]):  # a channel per call: new connections, spread over the workers
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = ipb.ModelInferRequest(model_name=MODEL, id=rid)
            request.inputs.add(name="numeric", datatype="FP32", shape=[1, 3])
            request.raw_input_contents.append(np.full((1, 3), i, dtype=np.float32).tobytes())
            answer = await ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert np.frombuffer(answer.raw_output_contents[0], dtype="<f4").tolist() == [0.25]
    for rid in ids[16:]:
        body = {"id": rid, "inputs": [{"name": "numeric", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer", json=body) as answer:
            assert answer.status == 200, await answer.text()
            assert (await answer.json())["outputs"][0]["data"] == [0.25]

    def mine(rs):  # type: ignore[no-untyped-def]
        return [p for p in (predictions_pb2.PredictionLogged.FromString(r.value) for r in rs) if p.request_id in ids]
    logged = mine(await read_records(infra.kafka_bootstrap, "predictions.logged",
                                     until=lambda rs: len(mine(rs)) >= len(ids), timeout=30))
    assert {p.request_id for p in logged} == set(ids)

    # Each worker counts its own requests; the supervisor's /metrics is their sum.
    async def summed() -> bool:
        values = await asyncio.to_thread(metrics, metrics_port)
        return values.get(f'flywheel_inference_requests_total{{arm="champion",model="{MODEL}",outcome="ok"}}') == 24
    await polling.eventually(summed, timeout=10, what="the summed request count")
    assert metrics(metrics_port)["flywheel_inference_workers"] == 2


async def test_sigterm_stops_every_worker(supervisor) -> None:  # type: ignore[no-untyped-def]
    workers = psutil.Process(supervisor.pid).children()
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait, 60) == 0
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive and len(gone) == 2
