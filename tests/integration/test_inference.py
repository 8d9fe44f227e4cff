"""The inference service end to end: registry -> load -> OIP v2 gRPC/REST -> predictions.logged."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.http.aio as httpclient

from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.inference.config import InferenceSettings, Route
from flywheel.inference.main import InferenceApp
from flywheel.inference.model import load_artifact
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.events.v1 import predictions_pb2
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

VOCAB = {"merchant": ["grocery", "online", "travel"]}
U = uuid.uuid4().hex[:8]
RT, CANARY, SHADOW, SWAP, EMPTY = (f"{k}-{U}" for k in ("rt", "canary", "shadow", "swap", "empty"))
RT_ARTIFACT = build_predictive_artifact(n_numeric=4, vocab=VOCAB, hidden=(8,), seed=1, name=RT)


def settings(infra, registry_app, models, **overrides) -> InferenceSettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    # Stock OIP clients send no token, as on `make run`'s loopback stack (tests/integration/test_auth_doors.py
    # covers the tokens).
    values = dict(**shared_settings(infra), http_port=0, models=models, registry_addr=registry_app.address,
                  db_schema=f"inference_{suffix}", consumer_group=f"inference-{suffix}", allow_anonymous_predict=True)
    values.update(overrides)
    return InferenceSettings(**values)


async def promote(registry, name: str, version: int, alias: str = "champion") -> None:  # type: ignore[no-untyped-def]
    await registry.SetAlias(rpb.SetAliasRequest(model_name=name, alias=alias, version=version))


async def constant_versions(registry, name: str, *constants: float) -> list[int]:  # type: ignore[no-untyped-def]
    versions = []
    for c in constants:
        artifact = build_predictive_artifact(n_numeric=3, hidden=(4,), constant=c, name=name)
        mv = await registry_client.register(registry, name, artifact)
        versions.append(mv.version)
    return versions


@pytest.fixture(scope="module")
async def app(infra, registry, registry_app) -> AsyncIterator[InferenceApp]:  # type: ignore[no-untyped-def]
    mv = await registry_client.register(registry, RT, RT_ARTIFACT)
    await promote(registry, RT, mv.version)
    for name in (CANARY, SHADOW):
        v1, v2 = await constant_versions(registry, name, 0.25, 0.75)
        await promote(registry, name, v1)
        await promote(registry, name, v2, "challenger")
    routing = {CANARY: Route(mode="canary", canary_share=0.3), SHADOW: Route(mode="shadow")}
    application = InferenceApp(settings(infra, registry_app, [RT, CANARY, SHADOW, SWAP, EMPTY], routing=routing))
    await application.start()
    yield application
    await application.stop()


class Client:
    """Our own OIP stubs: tritonclient.grpc ships the same `inference.*` protobuf symbols, so it cannot
    share a process with the server's generated module; its round trip runs in a subprocess below."""

    def __init__(self, stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
        self.stub = stub

    async def is_model_ready(self, name: str) -> bool:
        return (await self.stub.ModelReady(ipb.ModelReadyRequest(name=name))).ready

    async def infer(self, model: str, numeric: np.ndarray, request_id: str = "") -> tuple[str, np.ndarray]:
        r = ipb.ModelInferRequest(model_name=model, id=request_id)
        r.inputs.add(name="numeric", datatype="FP32", shape=list(numeric.shape))
        r.raw_input_contents.append(numeric.astype(np.float32).tobytes())
        out = await self.stub.ModelInfer(r)
        return out.model_version, np.frombuffer(out.raw_output_contents[0], dtype="<f4")


@pytest.fixture(scope="module")
async def client(app) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(app.grpc_address) as channel:
        yield Client(ipb_grpc.GRPCInferenceServiceStub(channel))


TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as g
address, model, rid = sys.argv[1:4]
numeric = np.load(sys.argv[4]); merchants = np.load(sys.argv[5], allow_pickle=True)
c = g.InferenceServerClient(address)
a = g.InferInput("numeric", list(numeric.shape), "FP32"); a.set_data_from_numpy(numeric)
b = g.InferInput("categorical", list(merchants.shape), "BYTES"); b.set_data_from_numpy(merchants)
r = c.infer(model, [a, b], request_id=rid)
m = c.get_model_metadata(model)
print(json.dumps({"live": c.is_server_live(), "ready": c.is_model_ready(model),
                  "version": r.get_response().model_version, "p": r.as_numpy("probability").tolist(),
                  "label": r.as_numpy("label").tolist(),
                  "inputs": [[t.name, t.datatype, list(t.shape)] for t in m.inputs],
                  "outputs": [[t.name, t.datatype, list(t.shape)] for t in m.outputs]}))
"""


async def triton_grpc(address: str, model: str, rid: str, numeric: np.ndarray, merchants: np.ndarray,
                      tmp_path) -> dict:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "n.npy", numeric)
    np.save(tmp_path / "m.npy", merchants, allow_pickle=True)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", TRITON_GRPC, address, model, rid,
                                                str(tmp_path / "n.npy"), str(tmp_path / "m.npy"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture(scope="module")
async def http(app) -> AsyncIterator[httpclient.InferenceServerClient]:  # type: ignore[no-untyped-def]
    c = httpclient.InferenceServerClient(app.http_address)
    yield c
    await c.close()


def rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 4)).astype(np.float32)
    numeric[0, 1] = np.nan  # missing values are allowed
    merchants = np.array([[bytes(rng.choice([b"grocery", b"online", b"travel", b"unknown-x", b""]))] for _ in range(n)],
                         dtype=np.object_)
    return numeric, merchants


def expected(numeric: np.ndarray, merchants: np.ndarray) -> np.ndarray:
    m = load_artifact(RT_ARTIFACT, name=RT, version=1)
    return m.score(numeric, m.category_indices(list(merchants.reshape(-1)), len(numeric)))


def http_inputs(numeric: np.ndarray, merchants: np.ndarray, mod=httpclient):  # type: ignore[no-untyped-def]
    a = mod.InferInput("numeric", list(numeric.shape), "FP32")
    a.set_data_from_numpy(numeric)
    b = mod.InferInput("categorical", list(merchants.shape), "BYTES")
    b.set_data_from_numpy(merchants)
    return [a, b]


async def test_grpc_and_rest_round_trips_are_logged(app, client, http, infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    numeric, merchants = rows(16)
    want = expected(numeric, merchants)
    assert await client.is_model_ready(RT)
    assert not await client.is_model_ready(EMPTY)

    result = await triton_grpc(app.grpc_address, RT, "rt-grpc-" + U, numeric, merchants, tmp_path)
    assert result["live"] and result["ready"] and result["version"] == "1"
    np.testing.assert_allclose(result["p"], want, rtol=1e-5)
    assert result["label"] == (want >= 0.5).astype(np.int64).tolist()
    assert result["inputs"] == [["numeric", "FP32", [-1, 4]], ["categorical", "BYTES", [-1, 1]]]
    assert result["outputs"] == [["probability", "FP32", [-1]], ["label", "INT64", [-1]]]

    for binary in (True, False):
        inputs = []
        for t in http_inputs(numeric, merchants):
            t.set_data_from_numpy(numeric if t.name() == "numeric" else merchants, binary_data=binary)
            inputs.append(t)
        outputs = [httpclient.InferRequestedOutput("probability", binary_data=binary)]
        res = await http.infer(RT, inputs, outputs=outputs, request_id=f"rt-http-{binary}-{U}")
        np.testing.assert_allclose(res.as_numpy("probability"), want, rtol=1e-5, err_msg=f"binary={binary}")
        assert res.get_response()["model_version"] == "1"

    rest_meta = await http.get_model_metadata(RT)
    assert rest_meta["inputs"][1]["name"] == "categorical"

    ids = {"rt-grpc-" + U, f"rt-http-True-{U}", f"rt-http-False-{U}"}

    def mine(rs):  # type: ignore[no-untyped-def]
        return [p for p in (predictions_pb2.PredictionLogged.FromString(r.value) for r in rs) if p.request_id in ids]
    logged = mine(await read_records(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name,
                                     until=lambda rs: len(mine(rs)) >= 3, timeout=30))
    assert {p.request_id for p in logged} == ids
    for p in logged:
        assert (p.model.name, p.model.version, p.arm) == (RT, 1, predictions_pb2.PREDICTION_ARM_CHAMPION)
        assert p.sample_rate == 1.0 and p.latency_ms > 0 and p.timestamp.seconds > 0
        assert [t.name for t in p.inputs] == ["numeric", "categorical"]
        assert p.inputs[1].bytes_contents[0] == merchants[0, 0]
        np.testing.assert_allclose(p.outputs[0].fp_contents, want, rtol=1e-5)


async def test_canary_split_is_sticky_and_within_tolerance(client) -> None:  # type: ignore[no-untyped-def]
    numeric = np.ones((1, 3), dtype=np.float32)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> str:
        async with sem:
            version, p = await client.infer(CANARY, numeric, request_id=f"canary-{U}-{i}")
        assert float(p[0]) == (0.75 if version == "2" else 0.25)
        return version
    versions = await asyncio.gather(*(one(i) for i in range(400)))
    share = versions.count("2") / len(versions)
    assert 0.2 <= share <= 0.4, share
    again = await asyncio.gather(*(one(i) for i in range(40)))
    assert again == versions[:40]  # sticky: the same key takes the same arm


async def test_shadow_scores_every_request_but_only_the_champion_answers(client, infra) -> None:  # type: ignore[no-untyped-def]
    ids = [f"shadow-{U}-{i}" for i in range(20)]
    for rid in ids:
        version, p = await client.infer(SHADOW, np.zeros((2, 3), dtype=np.float32), request_id=rid)
        assert version == "1" and p.tolist() == [0.25, 0.25]
    wanted = set(ids)

    def mine(rs):  # type: ignore[no-untyped-def]
        return [p for p in (predictions_pb2.PredictionLogged.FromString(r.value) for r in rs)
                if p.request_id in wanted]
    logged = mine(await read_records(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name,
                                     until=lambda rs: len(mine(rs)) >= 40, timeout=30))
    arms = {(p.request_id, p.arm): p for p in logged}
    for rid in ids:
        assert arms[(rid, predictions_pb2.PREDICTION_ARM_CHAMPION)].model.version == 1
        shadow = arms[(rid, predictions_pb2.PREDICTION_ARM_SHADOW)]
        assert shadow.model.version == 2 and list(shadow.outputs[0].fp_contents) == [0.75, 0.75]


async def test_promotion_under_load_swaps_without_failures(app, client, registry) -> None:  # type: ignore[no-untyped-def]
    numeric = np.ones((1, 3), dtype=np.float32)
    assert not await client.is_model_ready(SWAP)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(SWAP, numeric)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in err.value.details()

    v1, v2 = await constant_versions(registry, SWAP, 0.25, 0.75)
    value = {str(v1): 0.25, str(v2): 0.75}
    await promote(registry, SWAP, v1)
    for _ in range(200):  # the models.promoted consumer makes it ready
        if await client.is_model_ready(SWAP):
            break
        await asyncio.sleep(0.1)
    assert await client.is_model_ready(SWAP)

    seen: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                version, p = await client.infer(SWAP, numeric)
                assert float(p[0]) == value[version]
                seen.append(version)
            except Exception as exc:
                failures.append(exc)

    workers = [asyncio.create_task(load()) for _ in range(8)]

    async def answered(version: int, count: int) -> bool:
        return seen.count(str(version)) >= count or bool(failures)
    await polling.eventually(lambda: answered(v1, 20), 30, "the load answered by v1")  # before the swap
    await promote(registry, SWAP, v2)
    for _ in range(300):
        if seen and seen[-1] == str(v2) and seen[-20:].count(str(v2)) == 20:
            break
        await asyncio.sleep(0.05)
    await polling.eventually(lambda: answered(v2, 40), 30, "the load answered by v2")  # and some more after it
    stop.set()
    await asyncio.gather(*workers)
    assert not failures, failures[:3]
    assert str(v1) in seen and str(v2) in seen
    first_v2 = seen.index(str(v2))
    assert seen[first_v2 + 20:].count(str(v1)) == 0  # once swapped, only the new version answers


async def test_malformed_requests_get_the_right_codes(app, client) -> None:  # type: ignore[no-untyped-def]
    raw = np.ones((2, 4), dtype=np.float32).tobytes()
    cat = b"".join(len(v).to_bytes(4, "little") + v for v in (b"online", b"travel"))

    def req(**kw) -> ipb.ModelInferRequest:  # type: ignore[no-untyped-def]
        r = ipb.ModelInferRequest(model_name=kw.pop("model", RT), model_version=kw.pop("version", ""))
        for name, dt, shape in kw.pop("inputs", [("numeric", "FP32", [2, 4]), ("categorical", "BYTES", [2, 1])]):
            r.inputs.add(name=name, datatype=dt, shape=shape)
        r.raw_input_contents.extend(kw.pop("raw", [raw, cat]))
        return r

    cases = [
        (req(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (req(version="99"), grpc.StatusCode.NOT_FOUND, "99"),
        (req(inputs=[("numbers", "FP32", [2, 4]), ("categorical", "BYTES", [2, 1])]),
         grpc.StatusCode.INVALID_ARGUMENT, "numbers"),
        (req(inputs=[("numeric", "FP64", [2, 4]), ("categorical", "BYTES", [2, 1])],
             raw=[np.ones((2, 4)).tobytes(), cat]), grpc.StatusCode.INVALID_ARGUMENT, "FP32"),
        (req(inputs=[("numeric", "FP32", [2, 3]), ("categorical", "BYTES", [2, 1])]),
         grpc.StatusCode.INVALID_ARGUMENT, "numeric"),
        (req(raw=[raw[:-4], cat]), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (req(inputs=[("numeric", "FP32", [0, 4]), ("categorical", "BYTES", [0, 1])], raw=[b"", b""]),
         grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (req(inputs=[("numeric", "FP32", [2, 4])], raw=[raw]), grpc.StatusCode.INVALID_ARGUMENT, "categorical"),
        (req(model=EMPTY, inputs=[("numeric", "FP32", [2, 4])], raw=[raw]), grpc.StatusCode.UNAVAILABLE, "ready"),
    ]
    async with grpc.aio.insecure_channel(app.grpc_address) as channel:
        stub = ipb_grpc.GRPCInferenceServiceStub(channel)
        for request, code, words in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(request)
            assert err.value.code() == code, (request, err.value.details())
            assert words in err.value.details(), err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelMetadata(ipb.ModelMetadataRequest(name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        ok = await stub.ModelInfer(req())  # still serving
        assert ok.model_version == "1"

    base = f"http://{app.http_address}/v2/models"
    good = {"inputs": [{"name": "numeric", "shape": [1, 4], "datatype": "FP32", "data": [[1, None, 3, 4]]},
                       {"name": "categorical", "shape": [1, 1], "datatype": "BYTES", "data": ["online"]}]}
    async with aiohttp.ClientSession() as h:
        async with h.post(f"{base}/{RT}/infer", json=good) as r:
            doc = await r.json()
            assert r.status == 200 and doc["model_version"] == "1", doc
            assert len(doc["outputs"][0]["data"]) == 1
        bad = [
            (f"{base}/nope/infer", good, 404, "nope"),
            (f"{base}/{RT}/versions/7/infer", good, 404, "7"),
            (f"{base}/{RT}/infer", {"inputs": [{**good["inputs"][0], "shape": [1, 5]}, good["inputs"][1]]}, 400,
             "numeric"),
            (f"{base}/{RT}/infer", {"inputs": [{**good["inputs"][0], "datatype": "INT64", "data": [[1, 2, 3, 4]]},
                                               good["inputs"][1]]}, 400, "FP32"),
            (f"{base}/{RT}/infer", {"inputs": [{**good["inputs"][0], "data": [["x", 1, 2, 3]]},
                                               good["inputs"][1]]}, 400, "numeric"),
            (f"{base}/{RT}/infer", {"inputs": []}, 400, "numeric"),
            (f"{base}/{EMPTY}/infer", good, 503, "ready"),
        ]
        for url, body, status, words in bad:
            async with h.post(url, json=body) as r:
                doc = await r.json()
                assert r.status == status, (url, body, doc)
                assert words in doc["error"], doc
        async with h.post(f"{base}/{RT}/infer", data=b"{not json") as r:
            assert r.status == 400 and "JSON" in (await r.json())["error"]
        for url, status in ((f"{base}/{EMPTY}/ready", 503), (f"{base}/{RT}/ready", 200),
                            (f"http://{app.http_address}/v2/health/ready", 200)):
            async with h.get(url) as r:
                assert r.status == status, url
        async with h.get(f"{base}/{RT}") as r:
            meta = await r.json()
        assert json.dumps(meta["outputs"]) and meta["inputs"][0]["shape"] == [-1, 4]
