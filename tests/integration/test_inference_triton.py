"""Triton's extensions through stock tritonclient (gRPC and HTTP): repository index, model configuration and
inference statistics of a served model, against a real registry, broker and database."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests.integration import registry_client
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

U = uuid.uuid4().hex[:8]
MODEL, EMPTY, UNKNOWN = f"tri-a-{U}", f"tri-b-empty-{U}", f"nope-{U}"  # sorted: MODEL, EMPTY
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
MAX_BATCH = 8


@pytest.fixture(scope="module")
async def app(infra, registry, registry_app) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    artifact = build_predictive_artifact(n_numeric=4, vocab={"merchant": ["grocery", "online"]}, hidden=(8,), seed=3,
                                         name=MODEL)
    mv = await registry_client.register(registry, MODEL, artifact)
    await registry.SetAlias(rpb.SetAliasRequest(model_name=MODEL, alias="champion", version=mv.version))
    suffix = uuid.uuid4().hex[:8]
    settings = InferenceSettings(**shared_settings(infra), http_port=0, models=[MODEL, EMPTY],
                                 registry_addr=registry_app.address, db_schema=f"inference_{suffix}",
                                 consumer_group=f"inference-{suffix}", max_batch_size=MAX_BATCH, max_batch_wait_ms=1,
                                 allow_anonymous_predict=True)
    application = InferenceApp(settings)
    await application.start()
    yield application
    await application.stop()


# tritonclient.grpc registers the same `inference.*` protobuf symbols as our generated module, so it runs in a
# subprocess: it scores 3 requests (2 + 3 + 5 rows), makes 2 fail, and reads the extensions around them.
TRITON_GRPC = """
import json, sys, time
import numpy as np
import tritonclient.grpc as g
import tritonclient.grpc.model_config_pb2 as mc
from tritonclient.utils import InferenceServerException
address, model, unknown = sys.argv[1:4]
c = g.InferenceServerClient(address)
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

def stats(version=""):
    [s] = c.get_inference_statistics(model, version).model_stats
    i = s.inference_stats
    return {"name": s.name, "version": s.version, "last_inference": s.last_inference,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            **{p: [getattr(i, p).count, getattr(i, p).ns] for p in PHASES}}

def infer(rows, width=4):
    a = g.InferInput("numeric", [rows, width], "FP32"); a.set_data_from_numpy(np.ones((rows, width), np.float32))
    b = g.InferInput("categorical", [rows, 1], "BYTES")
    b.set_data_from_numpy(np.array([[b"online"]] * rows, dtype=np.object_))
    return c.infer(model, [a, b])

def error(call):
    try:
        call()
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    return None

before = stats()
start_ms = time.time() * 1000
for rows in (2, 3, 5):
    infer(rows)
end_ms = time.time() * 1000
failures = [error(lambda: infer(2, width=5)), error(lambda: infer(1, width=3))]
after = stats("1")
cfg = c.get_model_config(model).config
tensor = lambda t: [t.name, mc.DataType.Name(t.data_type), list(t.dims), t.HasField("reshape"), list(t.reshape.shape)]
print(json.dumps({
    "before": before, "after": after, "start_ms": start_ms, "end_ms": end_ms, "failures": failures,
    "extensions": list(c.get_server_metadata().extensions),
    "index": [[m.name, m.version, m.state, m.reason] for m in c.get_model_repository_index().models],
    "config": {"name": cfg.name, "platform": cfg.platform, "backend": cfg.backend,
               "max_batch_size": cfg.max_batch_size, "versions": list(cfg.version_policy.specific.versions),
               "input": [tensor(t) + [t.optional] for t in cfg.input], "output": [tensor(t) for t in cfg.output],
               "max_queue_delay_us": cfg.dynamic_batching.max_queue_delay_microseconds,
               "version": cfg.parameters["version"].string_value},
    "versioned_config_name": c.get_model_config(model, "1").config.name,
    "all_stats": [[s.name, s.version] for s in c.get_inference_statistics().model_stats],
    "unknown": [error(lambda: c.get_model_config(unknown)), error(lambda: c.get_inference_statistics(unknown)),
                error(lambda: c.get_inference_statistics(model, "9"))],
}))
"""


async def triton_grpc(address: str) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", TRITON_GRPC, address, MODEL, UNKNOWN,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def grown(before: dict, after: dict, key: str) -> int:
    """How much a statistic grew: ints for the counts, [count, ns] -> count for the phases."""
    b, a = before[key], after[key]
    if isinstance(a, list):
        return a[0] - b[0]
    if isinstance(a, dict):
        return a["count"] - b["count"]
    return a - b


async def test_tritonclient_grpc_reads_index_config_and_statistics(app) -> None:  # type: ignore[no-untyped-def]
    r = await triton_grpc(app.grpc_address)
    before, after = r["before"], r["after"]
    assert (after["name"], after["version"]) == (MODEL, "1")
    # 3 requests of 2 + 3 + 5 rows answered, 2 rejected (bad shapes): exactly that, nothing else.
    assert grown(before, after, "inference_count") == 10
    assert grown(before, after, "success") == 3 and grown(before, after, "fail") == 2
    # Sequential requests: each is its own batch, so its own execution.
    assert grown(before, after, "execution_count") == 3
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert grown(before, after, phase) == 3, phase
    for phase in PHASES:
        assert after[phase][1] > before[phase][1], phase  # the durations grew too
    assert r["start_ms"] - 50 <= after["last_inference"] <= r["end_ms"] + 50
    assert [f[0] for f in r["failures"]] == ["StatusCode.INVALID_ARGUMENT"] * 2

    assert {"model_repository", "model_configuration", "statistics"} <= set(r["extensions"])
    assert [m for m in r["index"] if m[0] in (MODEL, EMPTY)] == [
        [MODEL, "1", "READY", ""], [EMPTY, "", "UNAVAILABLE", "no version is the champion in the registry yet"]]

    cfg = r["config"]
    assert (cfg["name"], cfg["platform"], cfg["backend"]) == (MODEL, "pytorch_libtorch", "pytorch")
    assert (cfg["max_batch_size"], cfg["versions"], cfg["version"]) == (MAX_BATCH, [1], "1")
    assert cfg["max_queue_delay_us"] == 1000
    # With batching the batch dimension is implied: [-1, 4] -> dims [4]; [-1] -> dims [1] reshaped to [].
    assert cfg["input"] == [["numeric", "TYPE_FP32", [4], False, [], False],
                            ["categorical", "TYPE_STRING", [1], False, [], False]]
    assert cfg["output"] == [["probability", "TYPE_FP32", [1], True, []], ["label", "TYPE_INT64", [1], True, []]]
    assert r["versioned_config_name"] == MODEL
    assert [MODEL, "1"] in r["all_stats"] and not [s for s in r["all_stats"] if s[0] == EMPTY]

    for status, message in r["unknown"][:2]:
        assert status == "StatusCode.NOT_FOUND" and UNKNOWN in message and MODEL in message, message
    assert r["unknown"][2][0] == "StatusCode.NOT_FOUND" and "'9'" in r["unknown"][2][1]


async def test_our_grpc_stubs_get_not_found_and_the_ready_index(app) -> None:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(app.grpc_address) as channel:
        stub = ipb_grpc.GRPCInferenceServiceStub(channel)
        ready = await stub.RepositoryIndex(ipb.RepositoryIndexRequest(ready=True))
        assert [(m.name, m.version, m.state) for m in ready.models] == [(MODEL, "1", "READY")]
        for call, request in ((stub.ModelConfig, ipb.ModelConfigRequest(name=UNKNOWN)),
                              (stub.ModelStatistics, ipb.ModelStatisticsRequest(name=UNKNOWN))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and UNKNOWN in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:  # served, but without a champion
            await stub.ModelConfig(ipb.ModelConfigRequest(name=EMPTY))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await stub.ModelStatistics(ipb.ModelStatisticsRequest(name=EMPTY))).model_stats == []


def http_inputs(rows: int, width: int = 4) -> list:  # type: ignore[type-arg]
    a = httpclient.InferInput("numeric", [rows, width], "FP32")
    a.set_data_from_numpy(np.ones((rows, width), np.float32))
    b = httpclient.InferInput("categorical", [rows, 1], "BYTES")
    b.set_data_from_numpy(np.array([[b"grocery"]] * rows, dtype=np.object_))
    return [a, b]


async def test_tritonclient_http_reads_index_config_and_statistics(app) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(app.http_address)
    try:
        [before] = (await client.get_inference_statistics(MODEL))["model_stats"]
        start_ms = time.time() * 1000
        for rows in (1, 4):
            await client.infer(MODEL, http_inputs(rows))
        end_ms = time.time() * 1000
        for bad in (http_inputs(3, width=2), http_inputs(1)[:1]):  # wrong width; categorical missing
            with pytest.raises(InferenceServerException) as err:
                await client.infer(MODEL, bad)
            assert err.value.status() == "400"
        async with aiohttp.ClientSession() as h:  # rejected before the data plane: not a failed inference
            async with h.post(f"http://{app.http_address}/v2/models/{MODEL}/infer", data=b"{not json") as resp:
                assert resp.status == 400
        [after] = (await client.get_inference_statistics(MODEL, "1"))["model_stats"]
        assert (after["name"], after["version"]) == (MODEL, "1")
        assert after["inference_count"] - before["inference_count"] == 5
        assert after["execution_count"] - before["execution_count"] == 2
        stats = {p: after["inference_stats"][p]["count"] - before["inference_stats"][p]["count"] for p in PHASES}
        assert stats == {"success": 2, "fail": 2, "queue": 2, "compute_input": 2, "compute_infer": 2,
                         "compute_output": 2}
        assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
        assert start_ms - 50 <= after["last_inference"] <= end_ms + 50
        assert after["batch_stats"] == []

        every = (await client.get_inference_statistics())["model_stats"]
        assert [(s["name"], s["version"]) for s in every if s["name"] in (MODEL, EMPTY)] == [(MODEL, "1")]

        config = await client.get_model_config(MODEL)
        assert config == await client.get_model_config(MODEL, "1")
        assert (config["name"], config["platform"], config["max_batch_size"]) == (MODEL, "pytorch_libtorch", MAX_BATCH)
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
            ("numeric", "TYPE_FP32", [4]), ("categorical", "TYPE_STRING", [1])]
        assert [(t["name"], t["data_type"], t["dims"], t["reshape"]) for t in config["output"]] == [
            ("probability", "TYPE_FP32", [1], {"shape": []}), ("label", "TYPE_INT64", [1], {"shape": []})]
        assert config["version_policy"] == {"specific": {"versions": [1]}}

        index = [m for m in await client.get_model_repository_index() if m["name"] in (MODEL, EMPTY)]
        assert index == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""},
                         {"name": EMPTY, "state": "UNAVAILABLE",
                          "reason": "no version is the champion in the registry yet"}]
        assert {"model_repository", "model_configuration", "statistics"} <= set(
            (await client.get_server_metadata())["extensions"])

        for call in (client.get_model_config(UNKNOWN), client.get_inference_statistics(UNKNOWN)):
            with pytest.raises(InferenceServerException) as err:
                await call
            assert err.value.status() == "404"
            assert UNKNOWN in err.value.message() and MODEL in err.value.message(), err.value.message()
        with pytest.raises(InferenceServerException) as err:
            await client.get_model_config(MODEL, "9")
        assert err.value.status() == "404" and "'9'" in err.value.message()
    finally:
        await client.close()


async def test_rest_index_takes_the_ready_flag_and_rejects_bad_bodies(app) -> None:  # type: ignore[no-untyped-def]
    base = f"http://{app.http_address}/v2"
    async with aiohttp.ClientSession() as h:
        async with h.post(f"{base}/repository/index", json={"ready": True}) as resp:
            assert resp.status == 200
            assert [m["name"] for m in await resp.json()] == [MODEL]
        async with h.post(f"{base}/repository/index", json={"ready": "yes"}) as resp:
            assert resp.status == 400 and "ready" in (await resp.json())["error"]
        for path in (f"models/{UNKNOWN}/stats", f"models/{UNKNOWN}/config", f"models/{UNKNOWN}/versions/1/stats"):
            async with h.get(f"{base}/{path}") as resp:
                assert resp.status == 404, path
                assert UNKNOWN in (await resp.json())["error"], path
        async with h.get(f"{base}/models/{EMPTY}/config") as resp:
            assert resp.status == 503
        async with h.get(f"{base}/models/{EMPTY}/stats") as resp:
            assert resp.status == 200 and await resp.json() == {"model_stats": []}
