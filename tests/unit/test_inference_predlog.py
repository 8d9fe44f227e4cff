"""The prediction log's hand-made wire format equals what protobuf builds from the same values."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.inference.predlog import prediction_bytes, tensor_bytes
from flywheel.proto.events.v1 import common_pb2, predictions_pb2


def built(name: str, datatype: str, values: object, shape: list[int]) -> common_pb2.Tensor:
    t = common_pb2.Tensor(name=name, datatype=datatype, shape=shape)
    if datatype == "BYTES":
        t.bytes_contents.extend(values)  # type: ignore[arg-type]
    elif datatype.startswith("FP"):
        t.fp_contents.extend(np.asarray(values, dtype=np.float64).reshape(-1).tolist())
    elif datatype == "BOOL":
        t.bool_contents.extend(np.asarray(values).reshape(-1).tolist())
    else:
        t.int_contents.extend(np.asarray(values, dtype=np.int64).reshape(-1).tolist())
    return t


@pytest.mark.parametrize(("name", "datatype", "values", "shape"), [
    ("numeric", "FP32", np.array([[0.5, -1.25, np.nan, 3e38]], dtype=np.float32), [1, 4]),
    ("x", "FP64", np.array([1e-300, 0.0]), [2]),
    ("label", "INT64", np.array([0, 1, 1, 0]), [4]),
    ("idx", "INT64", np.array([-1, 300, 2**40, 5]), [2, 2]),
    ("flags", "BOOL", np.array([True, False]), [2]),
    ("categorical", "BYTES", [b"grocery", b"", "caf\u00e9".encode()], [3, 1]),
    ("empty", "FP32", np.zeros((0, 3), dtype=np.float32), [0, 3]),
])
def test_tensor_bytes_are_protobufs(name: str, datatype: str, values: object, shape: list[int]) -> None:
    ours = common_pb2.Tensor.FromString(tensor_bytes(name, datatype, values, shape))  # type: ignore[arg-type]
    expected = built(name, datatype, values, shape)
    assert ours.name == expected.name and ours.datatype == expected.datatype and ours.shape == expected.shape
    assert list(ours.int_contents) == list(expected.int_contents)
    assert list(ours.bytes_contents) == list(expected.bytes_contents)
    assert list(ours.bool_contents) == list(expected.bool_contents)
    np.testing.assert_array_equal(np.array(ours.fp_contents), np.array(expected.fp_contents))


@pytest.mark.parametrize("entity_ids", [None, ["c-1", "", "c\u00e9"]])
@pytest.mark.parametrize("parameters", [{}, {"routing_key": "k", "empty": ""}])
def test_prediction_bytes_equal_the_message_protobuf_builds(entity_ids: list[str] | None,
                                                            parameters: dict[str, str]) -> None:
    numeric = np.arange(6, dtype=np.float32).reshape(2, 3)
    probability, label = np.array([0.25, 0.75], dtype=np.float32), np.array([0, 1])
    ns = 1_767_225_600_123_456_789
    ours = prediction_bytes(
        request_id="req-\u00e9", model="fraud", version=3, arm="shadow",
        inputs=[tensor_bytes("numeric", "FP32", numeric.reshape(-1), [2, 3])],
        outputs=[tensor_bytes("probability", "FP32", probability, [2]), tensor_bytes("label", "INT64", label, [2])],
        latency_ms=1.5, timestamp_ns=ns, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", sample_rate=0.5,
        parameters=parameters, entity_ids=entity_ids)
    expected = predictions_pb2.PredictionLogged(
        request_id="req-\u00e9", model=common_pb2.ModelRef(name="fraud", version=3),
        arm=predictions_pb2.PREDICTION_ARM_SHADOW,
        inputs=[built("numeric", "FP32", numeric, [2, 3])],
        outputs=[built("probability", "FP32", probability, [2]), built("label", "INT64", label, [2])],
        latency_ms=1.5, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", sample_rate=0.5,
        parameters=parameters, entity_ids=entity_ids or [])
    expected.timestamp.seconds, expected.timestamp.nanos = divmod(ns, 1_000_000_000)
    assert predictions_pb2.PredictionLogged.FromString(ours) == expected
    if len(parameters) <= 1:  # map order is protobuf's own business beyond one entry
        assert ours == expected.SerializeToString(deterministic=True)
