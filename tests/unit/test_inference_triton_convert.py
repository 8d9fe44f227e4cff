"""Triton's extensions without a server: our proto matches tritonclient's field for field, the converters
write Triton's JSON and the same gRPC message, and the data plane counts statistics exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.inference import convert
from flywheel.inference.config import Route
from flywheel.inference.dataplane import (
    DataPlane,
    IndexEntry,
    InferRequest,
    InputTensor,
    ModelConfig,
    ModelSlot,
    TensorSpec,
)
from flywheel.inference.model import load_artifact
from flywheel.inference.predlog import PredictionLog
from flywheel.inference.stats import Duration, StatsSnapshot
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.inference import grpc_service_pb2, model_config_pb2

# Dumps the fields of every message and enum of a set of proto files: {full name: {field: [number, type,
# repeated, message/enum type]}} and {enum: {value: number}}, plus the service's methods.
DUMP = """
import json, sys
def message(d, out):
    out[d.full_name] = {f.name: [f.number, f.type, f.is_repeated,
                                 (f.message_type or f.enum_type).full_name if (f.message_type or f.enum_type) else ""]
                        for f in d.fields}
    for n in d.nested_types:
        message(n, out)
    for e in d.enum_types:
        out[e.full_name] = {v.name: v.number for v in e.values}
def dump(files):
    out = {}
    for fd in files:
        for d in fd.message_types_by_name.values():
            message(d, out)
        for e in fd.enum_types_by_name.values():
            out[e.full_name] = {v.name: v.number for v in e.values}
        for s in fd.services_by_name.values():
            for m in s.methods:
                out[m.full_name] = [m.input_type.full_name, m.output_type.full_name]
    return out
"""


def ours() -> dict[str, Any]:
    scope: dict[str, Any] = {}
    exec(DUMP, scope)
    return scope["dump"]([grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR])


def tritonclients() -> dict[str, Any]:
    """tritonclient's descriptors, read in a subprocess: its `inference.*` symbols clash with ours in one
    process's descriptor pool."""
    code = DUMP + ("import tritonclient.grpc.service_pb2 as s, tritonclient.grpc.model_config_pb2 as m\n"
                   "print(json.dumps(dump([s.DESCRIPTOR, m.DESCRIPTOR])))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_every_field_enum_value_and_rpc_we_declare_is_tritons() -> None:
    mine, theirs = ours(), tritonclients()
    for new in ("inference.ModelConfig", "inference.ModelStatistics", "inference.RepositoryIndexResponse.ModelIndex",
                "inference.GRPCInferenceService.ModelStatistics", "inference.DataType"):
        assert new in mine, new
    mismatches = []
    for name, spec in mine.items():
        if name not in theirs:
            mismatches.append(f"{name}: not in Triton's protocol")
        elif isinstance(spec, dict):
            mismatches += [f"{name}.{k}: ours {v}, Triton's {theirs[name].get(k)}" for k, v in spec.items()
                           if theirs[name].get(k) != v]
        elif spec != theirs[name]:
            mismatches.append(f"{name}: ours {spec}, Triton's {theirs[name]}")
    assert not mismatches, mismatches
    assert len(mine["inference.DataType"]) == len(theirs["inference.DataType"])  # every data type


def test_data_types_are_tritons_names() -> None:
    assert [convert.triton_data_type(t) for t in ("FP32", "INT64", "BYTES", "BOOL", "UINT8", "FP16")] == [
        "TYPE_FP32", "TYPE_INT64", "TYPE_STRING", "TYPE_BOOL", "TYPE_UINT8", "TYPE_FP16"]
    for t in ("FP32", "INT64", "BYTES"):
        assert convert.triton_data_type(t) in model_config_pb2.DataType.keys()
    with pytest.raises(ValueError, match="FLOAT"):
        convert.triton_data_type("FLOAT")


def config(max_batch_size: int, *, by_ids: bool = False) -> ModelConfig:
    inputs = [TensorSpec("numeric", "FP32", [-1, 4], by_ids), TensorSpec("categorical", "BYTES", [-1, 2], by_ids)]
    if by_ids:
        inputs.append(TensorSpec("customer_id", "BYTES", [-1], True))
    return ModelConfig(name="m", version="7", platform="pytorch_libtorch", backend="pytorch", versions=[6, 7],
                       max_batch_size=max_batch_size, max_batch_wait_us=2500, inputs=inputs,
                       outputs=[TensorSpec("probability", "FP32", [-1]), TensorSpec("label", "INT64", [-1])],
                       parameters={"version": "7"})


def test_config_without_batching_declares_full_shapes() -> None:
    doc = convert.config_to_rest(config(0))
    assert doc["max_batch_size"] == 0 and "dynamic_batching" not in doc
    assert [(t["name"], t["data_type"], t["dims"], t["optional"]) for t in doc["input"]] == [
        ("numeric", "TYPE_FP32", [-1, 4], False), ("categorical", "TYPE_STRING", [-1, 2], False)]
    assert [(t["name"], t["data_type"], t["dims"], "reshape" in t) for t in doc["output"]] == [
        ("probability", "TYPE_FP32", [-1], False), ("label", "TYPE_INT64", [-1], False)]
    assert doc["version_policy"] == {"specific": {"versions": [6, 7]}}
    assert doc["parameters"] == {"version": {"string_value": "7"}}
    json.dumps(doc)  # plain JSON


def test_config_with_batching_leaves_the_batch_dimension_out() -> None:
    doc = convert.config_to_rest(config(16, by_ids=True))
    assert doc["max_batch_size"] == 16
    assert doc["dynamic_batching"] == {"max_queue_delay_microseconds": 2500}
    assert [(t["name"], t["dims"], t.get("reshape"), t["optional"]) for t in doc["input"]] == [
        ("numeric", [4], None, True), ("categorical", [2], None, True),
        ("customer_id", [1], {"shape": []}, True)]
    assert [(t["dims"], t["reshape"]) for t in doc["output"]] == [([1], {"shape": []}), ([1], {"shape": []})]


def test_config_grpc_message_says_what_the_json_says() -> None:
    msg = convert.config_to_grpc(config(16, by_ids=True)).config
    assert (msg.name, msg.platform, msg.backend, msg.max_batch_size) == ("m", "pytorch_libtorch", "pytorch", 16)
    assert list(msg.version_policy.specific.versions) == [6, 7]
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in msg.input] == [
        ("numeric", model_config_pb2.TYPE_FP32, [4], True), ("categorical", model_config_pb2.TYPE_STRING, [2], True),
        ("customer_id", model_config_pb2.TYPE_STRING, [1], True)]
    out = msg.output[1]
    assert (out.name, out.data_type, list(out.dims)) == ("label", model_config_pb2.TYPE_INT64, [1])
    assert out.HasField("reshape") and list(out.reshape.shape) == []  # reshaped to [] is present, not absent
    assert not msg.input[0].HasField("reshape")
    assert msg.dynamic_batching.max_queue_delay_microseconds == 2500
    assert msg.parameters["version"].string_value == "7"
    assert not convert.config_to_grpc(config(0)).config.HasField("dynamic_batching")


def test_index_request_and_answer() -> None:
    assert convert.index_request_from_rest(b"") is False
    assert convert.index_request_from_rest(b'{"ready": true}') is True
    assert convert.index_request_from_rest(b"{}") is False
    for bad, words in ((b"{nope", "JSON"), (b"[]", "object"), (b'{"ready": "yes"}', "ready")):
        with pytest.raises(InvalidArgument, match=words):
            convert.index_request_from_rest(bad)
    entries = [IndexEntry("a", "3", "READY"), IndexEntry("b", "", "UNAVAILABLE", "no champion")]
    assert convert.index_to_rest(entries) == [{"name": "a", "version": "3", "state": "READY", "reason": ""},
                                              {"name": "b", "state": "UNAVAILABLE", "reason": "no champion"}]
    msg = convert.index_to_grpc(entries)
    assert [(m.name, m.version, m.state, m.reason) for m in msg.models] == [
        ("a", "3", "READY", ""), ("b", "", "UNAVAILABLE", "no champion")]


def test_statistics_land_in_tritons_fields() -> None:
    snap = StatsSnapshot(name="m", version="2", last_inference_ms=1_700_000_000_123, inference_count=40,
                         execution_count=5, success=Duration(10, 1000), fail=Duration(2, 20), queue=Duration(10, 0),
                         compute_input=Duration(10, 100), compute_infer=Duration(10, 700),
                         compute_output=Duration(10, 50))
    doc = convert.stats_to_rest([snap])["model_stats"][0]
    assert (doc["last_inference"], doc["inference_count"], doc["execution_count"]) == (1_700_000_000_123, 40, 5)
    assert doc["inference_stats"]["fail"] == {"count": 2, "ns": 20}
    assert doc["inference_stats"]["compute_infer"] == {"count": 10, "ns": 700}
    msg = convert.stats_to_grpc([snap]).model_stats[0]
    assert (msg.name, msg.version, msg.last_inference, msg.inference_count, msg.execution_count) == (
        "m", "2", 1_700_000_000_123, 40, 5)
    s = msg.inference_stats
    assert [(d.count, d.ns) for d in (s.success, s.fail, s.queue, s.compute_input, s.compute_infer,
                                      s.compute_output)] == [(10, 1000), (2, 20), (10, 0), (10, 100), (10, 700),
                                                             (10, 50)]


# -- the data plane's counting ------------------------------------------------------------------------

def plane(max_batch_size: int) -> DataPlane:
    model = load_artifact(build_predictive_artifact(n_numeric=2, hidden=(4,), name="m"), name="m", version=3)
    slot = ModelSlot("m", Route(), 1.0)
    slot.champion = model
    return DataPlane({"m": slot, "empty": ModelSlot("empty", Route(), 1.0)}, PredictionLog(None, max_input_values=10),
                     max_batch_size=max_batch_size, max_batch_wait_ms=20)


def request(rows: int, width: int = 2, name: str = "m", version: str = "") -> InferRequest:
    return InferRequest(name, [InputTensor("numeric", "FP32", [rows, width], np.zeros(rows * width, np.float32))],
                        model_version=version)


@pytest.mark.parametrize("max_batch_size", [0, 64])
async def test_statistics_count_exactly_what_happened(max_batch_size: int) -> None:
    dp = plane(max_batch_size)
    before = dp.model_statistics("m")[0]
    assert (before.inference_count, before.success.count, before.last_inference_ms) == (0, 0, 0)
    await asyncio.gather(*(dp.infer(request(rows)) for rows in (1, 2, 3, 4)))
    for bad in (request(1, width=3), request(0)):  # routed to version 3, then rejected
        with pytest.raises(InvalidArgument):
            await dp.infer(bad)
    for unroutable, error in ((request(1, name="nope"), NotFound), (request(1, version="9"), NotFound)):
        with pytest.raises(error):  # never reaches a version: counted nowhere
            await dp.infer(unroutable)
    [s] = dp.model_statistics("m")
    assert (s.name, s.version) == ("m", "3")
    assert s.inference_count == 10 and s.success.count == 4 and s.fail.count == 2
    assert s.compute_input.count == s.compute_output.count == s.compute_infer.count == s.queue.count == 4
    if max_batch_size:  # the four concurrent requests were scored together
        assert s.execution_count < 4 and s.queue.ns > 0
    else:
        assert s.execution_count == 4 and s.queue.ns == 0
    assert s.success.ns >= s.compute_input.ns + s.compute_output.ns > 0 and s.fail.ns > 0
    assert s.compute_infer.ns > 0
    assert abs(s.last_inference_ms - time.time() * 1000) < 5000


def test_statistics_and_config_select_models_and_versions() -> None:
    dp = plane(0)
    assert [(s.name, s.version) for s in dp.model_statistics()] == [("m", "3")]  # "empty" has no version
    assert dp.model_statistics("empty") == []
    assert [s.version for s in dp.model_statistics("m", "3")] == ["3"]
    with pytest.raises(NotFound, match=r"'nope'.*served: empty, m"):
        dp.model_statistics("nope")
    with pytest.raises(NotFound, match="version '4'"):
        dp.model_statistics("m", "4")
    with pytest.raises(InvalidArgument, match="without a model name"):
        dp.model_statistics("", "3")
    cfg = dp.model_config("m")
    assert (cfg.version, cfg.versions, cfg.max_batch_size, [t.name for t in cfg.inputs]) == ("3", [3], 0, ["numeric"])
    with pytest.raises(NotFound, match=r"'nope'.*served: empty, m"):
        dp.model_config("nope")


def test_repository_index_reports_ready_loading_and_unavailable() -> None:
    dp = plane(0)
    dp.slots["m"].challenger = dp.slots["m"].champion  # both aliases on one version: listed once
    dp.slots["empty"].load_error = "Unavailable: registry down"
    assert [(e.name, e.version, e.state) for e in dp.repository_index()] == [
        ("empty", "", "UNAVAILABLE"), ("m", "3", "READY")]
    assert "registry down" in dp.repository_index()[0].reason
    dp.slots["empty"].loading = 5
    assert [(e.name, e.version, e.state) for e in dp.repository_index()] == [
        ("empty", "5", "LOADING"), ("m", "3", "READY")]
    assert [(e.name, e.version, e.state) for e in dp.repository_index(ready=True)] == [("m", "3", "READY")]
    assert dp.server_metadata()["extensions"] == [
        "binary_tensor_data", "model_repository", "model_configuration", "statistics"]
