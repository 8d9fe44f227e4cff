"""`GenerationClient`: chat answers from inference's gRPC `Generate` (the `TextGenerator` port)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import GeneratedAnswer, GeneratedCitation, TextGenerator
from flywheel.proto.inference.v1 import generation_service_pb2 as pb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as pb_grpc

SERVICE = "inference"


class GenerationClient(ServiceClient, TextGenerator):
    """One channel kept open; `close` it. `timeout` bounds a whole generation (loading a pinned version
    on demand included)."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 300.0) -> None:
        self.address = address
        self.timeout = timeout
        self._connection = Connection(address, pb_grpc.GenerationServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=True)

    async def generate(self, model: str, messages: Sequence[dict[str, str]], *, max_tokens: int = 0,
                       temperature: float | None = None, seed: int | None = None, model_version: int = 0,
                       prompt_version: int = 0, user: str = "") -> GeneratedAnswer:
        request = pb.GenerateRequest(
            model=model, messages=pb.Messages(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                                        for m in messages]),
            user=user, model_version=model_version, prompt_version=prompt_version)
        if max_tokens:
            request.params.max_tokens = max_tokens
        if temperature is not None:
            request.params.temperature = temperature
        if seed is not None:
            request.params.seed = seed
        started = time.monotonic()
        parts: list[str] = []
        first = last = pb.GenerateResponse()  # the first message names the version, the last has the totals
        async with self._connection.stub() as stub:
            try:
                async for chunk in stub.Generate(request, timeout=self.timeout):
                    if not parts:
                        first = chunk
                    parts.append(chunk.text)
                    last = chunk
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return GeneratedAnswer(
            text="".join(parts), finish_reason=last.finish_reason, model=first.model,
            model_version=first.model_version, prompt_name=first.prompt.name, prompt_version=first.prompt.version,
            prompt_tokens=last.usage.prompt_tokens, completion_tokens=last.usage.completion_tokens,
            time_to_first_token_s=last.time_to_first_token_s, latency_s=time.monotonic() - started,
            citations=[GeneratedCitation(c.chunk_id, c.document_id, c.title, c.score) for c in last.citations],
            refused=last.refused, request_id=first.request_id)
