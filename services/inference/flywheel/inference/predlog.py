"""The prediction log: one `predictions.logged` event per request and arm, sampled per model,
published fire-and-forget through the libs' BoundedPublisher (a request never waits on Kafka;
what does not fit in the buffer is dropped and counted in flywheel_events_dropped_total).
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import numpy as np

from flywheel.common.events import Event
from flywheel.common.kafka import BoundedPublisher
from flywheel.common.telemetry import current_traceparent
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.proto.events.v1 import common_pb2, predictions_pb2

SOURCE = "flywheel-inference"
ARMS = {"champion": predictions_pb2.PREDICTION_ARM_CHAMPION,
        "challenger": predictions_pb2.PREDICTION_ARM_CHALLENGER,
        "shadow": predictions_pb2.PREDICTION_ARM_SHADOW}


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per request id, so both arms of a shadowed request are logged together."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def tensor(name: str, datatype: str, values: np.ndarray | list[bytes], shape: list[int]) -> common_pb2.Tensor:
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


class PredictionLog:
    def __init__(self, publisher: BoundedPublisher | None, *, max_input_values: int) -> None:
        self.publisher = publisher
        self.max_input_values = max_input_values

    def log(self, *, request_id: str, model: str, version: int, arm: str, inputs: list[common_pb2.Tensor] | None,
            outputs: list[common_pb2.Tensor], latency_ms: float, sample_rate: float,
            parameters: dict[str, str], entity_ids: list[str] | None = None) -> None:
        if self.publisher is None:
            return
        traceparent = current_traceparent()
        payload = predictions_pb2.PredictionLogged(
            request_id=request_id, model=common_pb2.ModelRef(name=model, version=version), arm=ARMS[arm],
            outputs=outputs, latency_ms=latency_ms, traceparent=traceparent, sample_rate=sample_rate,
            parameters=parameters, entity_ids=entity_ids or [], inputs=inputs or ())
        now = time.time_ns()
        payload.timestamp.seconds, payload.timestamp.nanos = divmod(now, 1_000_000_000)
        self.publisher.publish(Event(PREDICTIONS_LOGGED, request_id, payload, SOURCE,
                                     time=datetime.fromtimestamp(now / 1e9, UTC), traceparent=traceparent))
