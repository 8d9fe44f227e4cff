"""Scoring by entity ids: the inference service fetches the model's online features from a real feature
store (FeatureStoreApp in-process on the tiny Feast repo), batched in one GetOnlineFeatures call."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from flywheel.common import rpc
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.inference.config import InferenceSettings
from flywheel.inference.convert import encode_bytes
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.events.v1 import predictions_pb2
from flywheel.proto.events.v1.features_pb2 import FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fpb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fpb_grpc
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests.integration import registry_client
from tests.kafka_helpers import read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

FEAST_REPO = Path(__file__).resolve().parents[1] / "fixtures" / "feast_repo"
U = uuid.uuid4().hex[:8]
FRAUD, CUST = f"fs-fraud-{U}", f"fs-cust-{U}"
FRAUD_NUMERIC = ["customer_profile__avg_amount_30d", "customer_profile__txn_count_7d",
                 "merchant_risk__chargeback_rate"]
CUST_NUMERIC = ["customer_profile__avg_amount_30d", "customer_profile__txn_count_7d", "customer_profile__is_vip"]
CUST_VOCAB = {"customer_profile__segment": ["gold", "silver"]}


def featurestore_settings(infra) -> FeatureStoreSettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    return FeatureStoreSettings(
        **shared_settings(infra), db_schema=f"featurestore_{suffix}", consumer_group=f"featurestore-{suffix}",
        repo=str(FEAST_REPO))


def inference_settings(infra, registry_app, featurestore_addr: str) -> InferenceSettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    return InferenceSettings(
        **shared_settings(infra), http_port=0, models=[FRAUD, CUST], registry_addr=registry_app.address,
        featurestore_addr=featurestore_addr, db_schema=f"inference_{suffix}", consumer_group=f"inference-{suffix}",
        allow_anonymous_predict=True)


def ids_request(model: str, request_id: str = "", **keys: list[Any]) -> ipb.ModelInferRequest:
    r = ipb.ModelInferRequest(model_name=model, id=request_id)
    for name, values in keys.items():
        t = r.inputs.add(name=name, datatype="BYTES", shape=[len(values), 1])
        t.contents.bytes_contents.extend(str(v).encode() for v in values)
    return r


def tensor_request(model: str, numeric: np.ndarray, categorical: list[str] | None = None) -> ipb.ModelInferRequest:
    r = ipb.ModelInferRequest(model_name=model)
    r.inputs.add(name="numeric", datatype="FP32", shape=list(numeric.shape))
    r.raw_input_contents.append(numeric.astype(np.float32).tobytes())
    if categorical is not None:
        r.inputs.add(name="categorical", datatype="BYTES", shape=[len(categorical), 1])
        r.raw_input_contents.append(encode_bytes([c.encode() for c in categorical]))
    return r


async def probabilities(stub: ipb_grpc.GRPCInferenceServiceStub, request: ipb.ModelInferRequest) -> np.ndarray:
    out = await stub.ModelInfer(request)
    return np.frombuffer(out.raw_output_contents[0], dtype="<f4")


async def push(address: str, auth: rpc.ClientAuth, c1: str, c2: str, m1: int, m2: int) -> None:
    now = datetime.now(UTC)
    when = fpb.EntityRow().event_time
    when.FromDatetime(now)

    def profile(customer: str, avg: float, count: int, segment: str, vip: bool) -> fpb.PushRow:
        return fpb.PushRow(entity_keys={"customer_id": FeatureValue(string_value=customer)}, event_time=when,
                           values={"avg_amount_30d": FeatureValue(double_value=avg),
                                   "txn_count_7d": FeatureValue(int64_value=count),
                                   "segment": FeatureValue(string_value=segment),
                                   "is_vip": FeatureValue(bool_value=vip)})

    def risk(merchant: int, rate: float) -> fpb.PushRow:
        return fpb.PushRow(entity_keys={"merchant_id": FeatureValue(int64_value=merchant)}, event_time=when,
                           values={"chargeback_rate": FeatureValue(double_value=rate)})

    async with rpc.channel(address, default_timeout=30, auth=auth) as channel:
        stub = fpb_grpc.FeatureStoreServiceStub(channel)
        await stub.PushFeatures(fpb.PushFeaturesRequest(push_source="customer_profile_push", rows=[
            profile(c1, 120.5, 3, "gold", True), profile(c2, 8.25, 40, "silver", False)]))
        await stub.PushFeatures(fpb.PushFeaturesRequest(push_source="merchant_risk_push", rows=[
            risk(m1, 0.02), risk(m2, 0.4)]))


async def test_scoring_by_entity_ids(infra, registry, registry_app) -> None:  # type: ignore[no-untyped-def]
    fraud = build_predictive_artifact(numeric_features=FRAUD_NUMERIC, hidden=(8,), seed=3, name=FRAUD,
                                      feature_service="fraud_features", entity_keys=["customer_id", "merchant_id"],
                                      entity_key_types={"merchant_id": "int64"})
    cust = build_predictive_artifact(numeric_features=CUST_NUMERIC, vocab=CUST_VOCAB, hidden=(8,), seed=4,
                                     name=CUST, feature_service="customer_features", entity_keys=["customer_id"])
    for name, data in ((FRAUD, fraud), (CUST, cust)):
        mv = await registry_client.register(registry, name, data)
        await registry.SetAlias(rpb.SetAliasRequest(model_name=name, alias="champion", version=mv.version))

    c1, c2, nobody = f"c1-{U}", f"c2-{U}", f"nobody-{U}"
    m1, m2, no_merchant = (int(uuid.uuid4().int % 10**12) + k for k in (1, 2, 3))
    store = FeatureStoreApp(featurestore_settings(infra))
    await store.start()
    store_running = True
    app: InferenceApp | None = None
    try:
        await push(store.address, infra.tokens.auth("service"), c1, c2, m1, m2)
        app = InferenceApp(inference_settings(infra, registry_app, store.address))
        await app.start()
        async with grpc.aio.insecure_channel(app.grpc_address) as channel, aiohttp.ClientSession() as http:
            stub = ipb_grpc.GRPCInferenceServiceStub(channel)

            # Entity ids == the same feature values sent as tensors; an unknown entity == all missing (NaN).
            rid = f"ids-{U}"
            by_ids = await probabilities(stub, ids_request(FRAUD, rid, customer_id=[c1, c2, nobody],
                                                           merchant_id=[m1, m2, no_merchant]))
            nan = np.nan
            by_tensor = await probabilities(stub, tensor_request(FRAUD, np.array(
                [[120.5, 3, 0.02], [8.25, 40, 0.4], [nan, nan, nan]], dtype=np.float32)))
            np.testing.assert_allclose(by_ids, by_tensor, rtol=1e-6)
            assert len(set(by_ids.round(6).tolist())) == 3  # the rows really differ

            # Categorical features (strings) and booleans; ids as [N] over REST.
            body = {"inputs": [{"name": "customer_id", "datatype": "BYTES", "shape": [3], "data": [c2, nobody, c1]}]}
            async with http.post(f"http://{app.http_address}/v2/models/{CUST}/infer", json=body) as resp:
                assert resp.status == 200, await resp.text()
                rest = np.array((await resp.json())["outputs"][0]["data"], dtype=np.float32)
            want = await probabilities(stub, tensor_request(CUST, np.array(
                [[8.25, 40, 0], [nan, nan, nan], [120.5, 3, 1]], dtype=np.float32), ["silver", "", "gold"]))
            np.testing.assert_allclose(rest, want, rtol=1e-6)

            # A missing entity key input.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(ids_request(FRAUD, customer_id=[c1]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "merchant_id" in (err.value.details() or "")

            # The prediction log carries the entity ids and the fetched features.
            def mine(rs):  # type: ignore[no-untyped-def]
                # By key (the request id): the topic also holds other tests' records, poison ones included.
                return [predictions_pb2.PredictionLogged.FromString(r.value) for r in rs if r.key == rid.encode()]
            logged = mine(await read_records(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name,
                                             until=lambda rs: len(mine(rs)) >= 1, timeout=30))
            assert list(logged[0].entity_ids) == [c1, c2, nobody]
            assert logged[0].inputs[0].name == "numeric"
            assert logged[0].inputs[0].fp_contents[:3] == pytest.approx([120.5, 3, 0.02])

            # The feature store down: UNAVAILABLE (REST 503), the tensor path still works.
            await store.stop()
            store_running = False
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(ids_request(FRAUD, customer_id=[c1], merchant_id=[m1]))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "feature store" in (err.value.details() or "")
            async with http.post(f"http://{app.http_address}/v2/models/{CUST}/infer", json=body) as resp:
                assert resp.status == 503
                assert "feature store" in (await resp.json())["error"]
            assert len(await probabilities(stub, tensor_request(FRAUD, np.zeros((2, 3), dtype=np.float32)))) == 2
    finally:
        if app is not None:
            await app.stop()
        if store_running:
            await store.stop()
