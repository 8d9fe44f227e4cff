"""The broker going away never fails a prediction: log events are dropped and counted."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest

from flywheel.common.kafka import EVENTS_DROPPED
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from tests.integration import registry_client
from tests.integration.test_inference import promote, settings

pytestmark = pytest.mark.integration


def dropped() -> float:
    return sum(s.value for m in EVENTS_DROPPED.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("topic") == PREDICTIONS_LOGGED.name)


async def test_requests_succeed_and_drops_are_counted_while_the_broker_is_down(infra, registry, registry_app) -> None:  # type: ignore[no-untyped-def]
    name = f"outage-{uuid.uuid4().hex[:8]}"
    mv = await registry_client.register(registry, name, build_predictive_artifact(n_numeric=3, hidden=(4,), name=name))
    await promote(registry, name, mv.version)
    app = InferenceApp(settings(infra, registry_app, [name], log_queue_size=5))
    await app.start()
    before = dropped()
    try:
        infra.stop_broker()
        try:
            async with grpc.aio.insecure_channel(app.grpc_address) as channel:
                stub = ipb_grpc.GRPCInferenceServiceStub(channel)
                for i in range(50):
                    r = ipb.ModelInferRequest(model_name=name, id=f"outage-{i}")
                    r.inputs.add(name="numeric", datatype="FP32", shape=[1, 3])
                    r.raw_input_contents.append(np.ones((1, 3), dtype=np.float32).tobytes())
                    response = await stub.ModelInfer(r, timeout=5)
                    assert response.model_version == str(mv.version)
        finally:
            infra.start_broker()
        assert dropped() - before >= 40
        assert app.publisher.dropped >= 40
    finally:
        await app.stop()
