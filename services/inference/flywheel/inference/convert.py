"""Wire formats <-> the data plane's types: OIP v2 gRPC messages and OIP v2 REST JSON (with the
Triton binary-data extension that tritonclient uses by default), and the answers of Triton's model
repository, model configuration and statistics extensions."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from google.protobuf import json_format

from flywheel.common.errors import InvalidArgument
from flywheel.inference.dataplane import IndexEntry, InferRequest, InferResponse, InputTensor, ModelConfig, TensorSpec
from flywheel.inference.stats import Duration, StatsSnapshot
from flywheel.proto.inference import grpc_service_pb2 as pb

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _count(name: str, shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: shape {shape} has a negative dimension")
    return math.prod(shape)


def _check_datatype(name: str, datatype: str) -> None:
    if datatype != "BYTES" and datatype not in DTYPES:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}")


def decode_bytes(name: str, raw: bytes) -> list[bytes]:
    """Triton's BYTES raw format: each element is a 4-byte little-endian length and the bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidArgument(f"input {name!r}: BYTES element of {size} bytes runs past the end of the data")
        out.append(raw[offset:offset + size])
        offset += size
    return out


def encode_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Any:
    count = _count(name, shape)
    if datatype == "BYTES":
        values = decode_bytes(name, raw)
        if len(values) != count:
            raise InvalidArgument(f"input {name!r}: shape {shape} needs {count} BYTES elements, got {len(values)}")
        return values
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                              f"raw contents hold {len(raw)}")
    return np.frombuffer(raw, dtype=dtype)


# -- gRPC ------------------------------------------------------------------------------------------

def _param(p: pb.InferParameter) -> str:
    kind = p.WhichOneof("parameter_choice")
    return "" if kind is None else str(getattr(p, kind))


def request_from_grpc(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        _check_datatype(t.name, t.datatype)
        if raw:
            data = from_raw(t.name, t.datatype, shape, raw[i])
        else:
            values = getattr(t.contents, CONTENTS_FIELD[t.datatype])
            data = list(values) if t.datatype == "BYTES" else np.asarray(values, dtype=DTYPES[t.datatype])
        inputs.append(InputTensor(t.name, t.datatype, shape, data))
    return InferRequest(model_name=request.model_name, model_version=request.model_version, id=request.id,
                        inputs=inputs, outputs=[o.name for o in request.outputs] or None,
                        parameters={k: _param(v) for k, v in request.parameters.items()})


def response_to_grpc(response: InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                id=response.id)
    out.parameters["arm"].string_param = response.arm
    for t in response.outputs:
        out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        out.raw_output_contents.append(np.ascontiguousarray(t.data, dtype=DTYPES[t.datatype]).tobytes())
    return out


def metadata_to_grpc(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    tm = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"],
        inputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
        outputs=[tm(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])


# -- REST ------------------------------------------------------------------------------------------

HEADER_LENGTH = "inference-header-content-length"


def _flatten(name: str, datatype: str, data: Any, count: int) -> Any:
    if datatype == "BYTES":
        flat: list[Any] = []
        stack = [data]
        while stack:  # iterative flatten, keeps order
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        return [v.encode() if isinstance(v, str) else b"" if v is None else str(v).encode() for v in flat]
    dtype = DTYPES[datatype]
    try:
        return np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError):
        pass
    if dtype.kind == "f":  # null = missing (JSON has no NaN)
        try:
            arr = np.asarray(data, dtype=object).reshape(-1)
            return np.asarray([np.nan if v is None else v for v in arr], dtype=dtype)
        except (TypeError, ValueError):
            pass
    raise InvalidArgument(f"input {name!r}: data is not a (nested) list of {datatype} values")


def request_from_rest(model_name: str, model_version: str, body: bytes,
                      header_length: int | None) -> tuple[InferRequest, set[str], bool]:
    """(request, outputs wanted as binary data, whether all outputs are binary)."""
    binary = b""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidArgument(f"Inference-Header-Content-Length {header_length} exceeds the body")
        body, binary = body[:header_length], body[header_length:]
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidArgument("request body must be a JSON object with an 'inputs' list")
    inputs, offset = [], 0
    for i, t in enumerate(doc["inputs"]):
        if not isinstance(t, dict):
            raise InvalidArgument(f"inputs[{i}] must be an object")
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument(f"inputs[{i}]: 'name' and 'datatype' are required strings")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InvalidArgument(f"input {name!r}: 'shape' must be a list of integers")
        _check_datatype(name, datatype)
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"input {name!r}: binary_data_size {size} exceeds the binary data")
            data = from_raw(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in t:
            data = _flatten(name, datatype, t["data"], _count(name, shape))
        else:
            raise InvalidArgument(f"input {name!r}: 'data' is required")
        inputs.append(InputTensor(name, datatype, shape, data))
    outputs = doc.get("outputs")
    params = doc.get("parameters") or {}
    params = params if isinstance(params, dict) else {}
    binary_out = {o.get("name") for o in outputs if isinstance(o, dict) and (o.get("parameters") or {}).get(
        "binary_data")} if isinstance(outputs, list) else set()
    request = InferRequest(
        model_name=model_name, model_version=model_version, id=str(doc.get("id") or ""), inputs=inputs,
        outputs=[o.get("name") for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else None,
        parameters={str(k): str(v) for k, v in params.items() if k not in ("binary_data_output",)})
    return request, binary_out, bool(params.get("binary_data_output"))


def response_to_rest(response: InferResponse, binary: set[str] | frozenset[str] = frozenset(),
                     all_binary: bool = False) -> tuple[bytes, int | None]:
    """(body, header length or None when the body is plain JSON)."""
    outputs, chunks = [], []
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if all_binary or t.name in binary:
            raw = np.ascontiguousarray(t.data, dtype=DTYPES[t.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.tolist()
        outputs.append(entry)
    header = json.dumps({"model_name": response.model_name, "model_version": response.model_version,
                         "id": response.id, "parameters": {"arm": response.arm}, "outputs": outputs},
                        separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


# -- Triton's extensions: repository index, model configuration, statistics ------------------------
# Each answer is built once as the JSON Triton's HTTP/REST API returns; the gRPC message is parsed from
# that same JSON (strictly: an unknown field fails), so both front doors always say the same thing.

def index_request_from_rest(body: bytes) -> bool:
    """The `ready` flag of a POST /v2/repository/index body (tritonclient sends an empty body)."""
    if not body.strip():
        return False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument('request body must be a JSON object, e.g. {"ready": true}')
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidArgument(f"'ready' must be true or false, got {ready!r}")
    return ready


def index_to_rest(entries: list[IndexEntry]) -> list[dict[str, str]]:
    """Triton's index JSON: a list of {name, version (when there is one), state, reason}."""
    return [{"name": e.name, **({"version": e.version} if e.version else {}), "state": e.state,
             "reason": e.reason} for e in entries]


def index_to_grpc(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    return json_format.ParseDict({"models": index_to_rest(entries)}, pb.RepositoryIndexResponse())


def triton_data_type(datatype: str) -> str:
    """An OIP datatype as Triton's model configuration names it: FP32 -> TYPE_FP32, BYTES -> TYPE_STRING."""
    if datatype == "BYTES":
        return "TYPE_STRING"
    if datatype not in DTYPES and datatype != "BF16":
        raise ValueError(f"no Triton data type for {datatype!r}")
    return f"TYPE_{datatype}"


def _dims(shape: list[int], batching: bool) -> dict[str, Any]:
    """Triton's `dims` of a tensor whose full shape (batch dimension first) is `shape`. With batching
    (max_batch_size > 0) the batch dimension is implied and left out; a tensor that is nothing but the
    batch dimension is then declared as dims [1] reshaped to [] (Triton's idiom), so a client that adds
    the batch dimension back gets [-1]."""
    if not batching:
        return {"dims": list(shape)}
    rest = list(shape[1:])
    return {"dims": rest} if rest else {"dims": [1], "reshape": {"shape": []}}


def _tensor_config(t: TensorSpec, batching: bool, *, is_input: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "data_type": triton_data_type(t.datatype), **_dims(t.shape, batching)}
    if is_input:
        out["optional"] = t.optional
    return out


def config_to_rest(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration JSON (the ModelConfig message, field names as in the proto)."""
    batching = config.max_batch_size > 0
    out: dict[str, Any] = {
        "name": config.name, "platform": config.platform, "backend": config.backend,
        "version_policy": {"specific": {"versions": list(config.versions)}},
        "max_batch_size": config.max_batch_size,
        "input": [_tensor_config(t, batching, is_input=True) for t in config.inputs],
        "output": [_tensor_config(t, batching, is_input=False) for t in config.outputs],
    }
    if batching:
        out["dynamic_batching"] = {"max_queue_delay_microseconds": config.max_batch_wait_us}
    out["parameters"] = {k: {"string_value": v} for k, v in config.parameters.items()}
    return out


def config_to_grpc(config: ModelConfig) -> pb.ModelConfigResponse:
    return json_format.ParseDict({"config": config_to_rest(config)}, pb.ModelConfigResponse())


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def stats_to_rest(stats: list[StatsSnapshot]) -> dict[str, Any]:
    """Triton's statistics JSON: {"model_stats": [...]}, numbers as JSON numbers."""
    return {"model_stats": [{
        "name": s.name, "version": s.version, "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {"success": _duration(s.success), "fail": _duration(s.fail),
                            "queue": _duration(s.queue), "compute_input": _duration(s.compute_input),
                            "compute_infer": _duration(s.compute_infer),
                            "compute_output": _duration(s.compute_output)},
        "batch_stats": [],
    } for s in stats]}


def stats_to_grpc(stats: list[StatsSnapshot]) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict(stats_to_rest(stats), pb.ModelStatisticsResponse())
