"""`python bench/noop_server.py GRPC_PORT HTTP_PORT [MODEL_PT]`: the ceiling peer of the inference benchmark
and, given the TorchScript model, its floor peer.

An OIP v2 server that does nothing but answer: grpc.aio with a canned ModelInfer answer (zeros of the
request's row count, as raw_output_contents) and, on the same event loop, uvicorn (httptools) running a
bare ASGI app with the canned REST answer and the health/ready routes the benchmark polls. No model, no
validation, no logging, no authentication, no metrics: what the same tritonclient load reaches against
a Python server on this machine is the ceiling any Python OIP server can approach here.

With MODEL_PT the answers are the model's instead: the input tensor (raw FP32 bytes over gRPC, the JSON data
over REST) goes through the TorchScript forward (one torch thread, inference_mode, as Flywheel and the
MLServer runtime run it) and its output comes back. Still no validation, logging, authentication or metrics:
what any server of this model on this stack costs at the least, so no real server reaches more.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Any

import grpc
import numpy as np
import torch
import uvicorn

from flywheel.proto.inference import grpc_service_pb2 as pb
from flywheel.proto.inference import grpc_service_pb2_grpc as pb_grpc

SHAPE = re.compile(rb'"shape"\s*:\s*\[\s*(\d+)')


class Canned(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.answers: dict[int, pb.ModelInferResponse] = {}

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        answer = self.answers.get(rows)
        if answer is None:
            answer = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
            answer.outputs.add(name="probability", datatype="FP32", shape=[rows])
            answer.raw_output_contents.append(bytes(4 * rows))
            self.answers[rows] = answer
        return answer

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=True)


class ModelOnly(Canned):
    """ModelInfer through the model: FP32 rows in, the model's probabilities out."""

    def __init__(self, forward: Any) -> None:
        super().__init__()
        self.forward = forward

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        numeric = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
        probability = self.forward(numeric)
        answer = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        answer.outputs.add(name="probability", datatype="FP32", shape=[len(probability)])
        answer.raw_output_contents.append(probability.tobytes())
        return answer


def model_forward(path: str) -> Any:
    """numeric FP32 values (rows of 30) -> FP32 probabilities, through the TorchScript model."""
    torch.set_num_threads(1)
    module = torch.jit.load(path, map_location="cpu").eval()

    def forward(values: np.ndarray) -> np.ndarray:
        numeric = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 30))
        with torch.inference_mode():
            out = module(numeric, torch.zeros((numeric.shape[0], 0), dtype=torch.int64))
        return out.numpy().astype(np.float32).reshape(-1)
    forward(np.zeros(30, dtype=np.float32))  # warm up, as the other servers do before serving
    return forward


def rest_app(forward: Any = None) -> Any:
    answers: dict[int, bytes] = {}
    ok = json.dumps({"ready": True}).encode()

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"].endswith("/infer") and forward is not None:
            request = json.loads(body)
            probability = forward(np.asarray(request["inputs"][0]["data"], dtype=np.float32))
            payload = json.dumps({
                "model_name": "noop", "model_version": "1", "outputs": [
                    {"name": "probability", "datatype": "FP32", "shape": [len(probability)],
                     "data": probability.tolist()}]}, separators=(",", ":")).encode()
        elif scope["path"].endswith("/infer"):
            match = SHAPE.search(body)
            rows = int(match.group(1)) if match else 1
            payload = answers.get(rows)
            if payload is None:
                payload = answers[rows] = json.dumps({
                    "model_name": "noop", "model_version": "1", "outputs": [
                        {"name": "probability", "datatype": "FP32", "shape": [rows], "data": [0.0] * rows}]},
                    separators=(",", ":")).encode()
        else:
            payload = ok
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


async def serve(grpc_port: int, http_port: int, model_path: str | None) -> None:
    forward = model_forward(model_path) if model_path else None
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Canned() if forward is None else ModelOnly(forward), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    config = uvicorn.Config(rest_app(forward), host="127.0.0.1", port=http_port, lifespan="off", log_level="warning",
                            access_log=False, http="httptools", loop="none")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await server.stop(1)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or "--help" in sys.argv or "-h" in sys.argv:
        sys.exit(__doc__)
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else None))
