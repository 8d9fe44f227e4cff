"""`python bench/noop_server.py GRPC_PORT HTTP_PORT`: the ceiling peer of the inference benchmark.

An OIP v2 server that does nothing but answer: grpc.aio with a canned ModelInfer answer (zeros of the
request's row count, as raw_output_contents) and, on the same event loop, uvicorn (httptools) running a
bare ASGI app with the canned REST answer and the health/ready routes the benchmark polls. No model, no
validation, no logging, no authentication, no metrics: what the same tritonclient load reaches against
a Python server on this machine is the ceiling any Python OIP server can approach here.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Any

import grpc
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


def rest_app() -> Any:
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
        if scope["path"].endswith("/infer"):
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


async def serve(grpc_port: int, http_port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Canned(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    config = uvicorn.Config(rest_app(), host="127.0.0.1", port=http_port, lifespan="off", log_level="warning",
                            access_log=False, http="httptools", loop="none")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
