"""The prediction log: one `predictions.logged` event per request and arm, sampled per model,
published fire-and-forget through the libs' BoundedPublisher (a request never waits on Kafka;
what does not fit in the buffer is dropped and counted in flywheel_events_dropped_total).

The event is encoded once, by hand, in protobuf's wire format: tensors go from numpy straight to
packed bytes (`tensor_bytes`, no per-value Python objects), the message's fields are concatenated, and
the payload is parsed from those bytes once (in C) for the Event. Building the message field by field
from Python lists cost about three times as much, a visible share of a tiny model's request.
`tests/unit/test_inference_predlog.py` checks the bytes against the message protobuf builds.
"""

from __future__ import annotations

import hashlib
import struct
import time
from datetime import UTC, datetime
from functools import lru_cache

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
_DOUBLE = struct.Struct("<d")


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per request id, so both arms of a shadowed request are logged together."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


# -- protobuf wire format ----------------------------------------------------------------------------

_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (`tag` = the byte of field number << 3 | 2)."""
    n = len(payload)
    return tag + (_ONE_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, value: str) -> bytes:
    return _field(tag, value.encode()) if value else b""


def _packed_varints(values: np.ndarray) -> bytes:
    flat = values.reshape(-1)
    if flat.size > 16:
        if flat.min() >= 0 and flat.max() < 0x80:  # one byte each: vectorized
            return flat.astype(np.uint8).tobytes()
        return b"".join(_varint(v) for v in flat.tolist())
    small = flat.tolist()
    if all(0 <= v < 0x80 for v in small):
        return bytes(small)
    return b"".join(_varint(v) for v in small)


@lru_cache(maxsize=256)
def _tensor_head(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    return (_string(b"\x0a", name) + _string(b"\x12", datatype)
            + (_field(b"\x1a", b"".join(_varint(d) for d in shape)) if shape else b""))


def tensor_bytes(name: str, datatype: str, values: np.ndarray | list[bytes], shape: list[int]) -> bytes:
    """A `flywheel.events.v1.Tensor` in wire format: FP* as fp_contents (double), BYTES as
    bytes_contents, BOOL as bool_contents, integers as int_contents."""
    head = _tensor_head(name, datatype, tuple(shape))
    if datatype == "BYTES":
        return head + b"".join(_field(b"\x32", bytes(v)) for v in values)  # type: ignore[arg-type]
    array = values if isinstance(values, np.ndarray) else np.asarray(values)
    if array.size == 0:
        return head
    if datatype[:2] == "FP":
        return head + _field(b"\x22", array.astype("<f8", copy=False).tobytes())
    if datatype == "BOOL":
        return head + _field(b"\x3a", array.astype(bool).astype(np.uint8).tobytes())
    return head + _field(b"\x2a", _packed_varints(array.astype(np.int64, copy=False)))


def tensor(name: str, datatype: str, values: np.ndarray | list[bytes], shape: list[int]) -> common_pb2.Tensor:
    """The same tensor as a message."""
    return common_pb2.Tensor.FromString(tensor_bytes(name, datatype, values, shape))


@lru_cache(maxsize=256)
def _model_and_arm(model: str, version: int, arm: str) -> bytes:
    return (_field(b"\x12", _string(b"\x0a", model) + (b"\x10" + _varint(version) if version else b""))
            + b"\x18" + _varint(ARMS[arm]))


@lru_cache(maxsize=4)
def _seconds(seconds: int) -> bytes:
    return b"\x08" + _varint(seconds) if seconds else b""


def prediction_bytes(*, request_id: str, model: str, version: int, arm: str, inputs: list[bytes] | None,
                     outputs: list[bytes], latency_ms: float, timestamp_ns: int, traceparent: str,
                     sample_rate: float, parameters: dict[str, str], entity_ids: list[str] | None) -> bytes:
    """A `PredictionLogged` in wire format (fields in number order, defaults left out as protobuf does)."""
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    parts = [_string(b"\x0a", request_id), _model_and_arm(model, version, arm)]
    if inputs:
        parts += [_field(b"\x22", t) for t in inputs]
    parts += [_field(b"\x32", t) for t in outputs]
    if entity_ids:
        parts += [_string(b"\x3a", e) if e else b"\x3a\x00" for e in entity_ids]
    if latency_ms:
        parts.append(b"\x41" + _DOUBLE.pack(latency_ms))
    parts.append(_field(b"\x4a", _seconds(seconds) + (b"\x10" + _varint(nanos) if nanos else b"")))
    if traceparent:
        parts.append(_string(b"\x52", traceparent))
    if sample_rate:
        parts.append(b"\x59" + _DOUBLE.pack(sample_rate))
    if parameters:
        parts += [_field(b"\x6a", _string(b"\x0a", k) + _string(b"\x12", v)) for k, v in parameters.items()]
    return b"".join(parts)


class PredictionLog:
    def __init__(self, publisher: BoundedPublisher | None, *, max_input_values: int) -> None:
        self.publisher = publisher
        self.max_input_values = max_input_values

    def log(self, *, request_id: str, model: str, version: int, arm: str, inputs: list[bytes] | None,
            outputs: list[bytes], latency_ms: float, sample_rate: float, parameters: dict[str, str],
            entity_ids: list[str] | None = None) -> None:
        """`inputs`/`outputs`: tensors encoded by `tensor_bytes`."""
        if self.publisher is None:
            return
        traceparent = current_traceparent()
        now = time.time_ns()
        payload = predictions_pb2.PredictionLogged.FromString(prediction_bytes(
            request_id=request_id, model=model, version=version, arm=arm, inputs=inputs, outputs=outputs,
            latency_ms=latency_ms, timestamp_ns=now, traceparent=traceparent, sample_rate=sample_rate,
            parameters=parameters, entity_ids=entity_ids))
        self.publisher.publish(Event(PREDICTIONS_LOGGED, request_id, payload, SOURCE,
                                     time=datetime.fromtimestamp(now / 1e9, UTC), traceparent=traceparent))
