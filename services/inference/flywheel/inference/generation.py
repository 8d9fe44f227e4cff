"""The gRPC generation door (flywheel.inference.v1.GenerationService): `Generate` streams an LLM's answer
to product backends. The request is validated and queued before the first message, so every refusal is a
status (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while the model
loads); a caller that cancels the call cancels its generation. Answers go through the LLM response cache
(flywheel/inference/cache): the initial and trailing metadata `x-flywheel-cache` say exact, semantic or miss,
and metadata `x-flywheel-tenant` names the tenant the request is cached for."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc

from flywheel.common import auth
from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.common.rpc import map_errors
from flywheel.inference.cache.service import HEADER as CACHE_HEADER
from flywheel.inference.cache.service import ResponseCache, tenant_of
from flywheel.inference.llm import is_overloaded
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.llm.service import LLMService
from flywheel.proto.inference.v1 import generation_service_pb2 as pb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
ROLES: dict[str, auth.Roles] = {"Generate": auth.PREDICT}


def sampling_from_grpc(params: pb.SamplingParams) -> SamplingParams:
    temperature = params.temperature if params.HasField("temperature") else 1.0
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not math.isfinite(temperature) or not math.isfinite(top_p):
        raise InvalidArgument("temperature and top_p must be finite numbers")
    return SamplingParams(temperature=float(temperature), top_p=float(top_p),
                          max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
                          stop=tuple(params.stop), seed=params.seed if params.HasField("seed") else None).validate()


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, llm: LLMService | None, *, cache: ResponseCache | None = None) -> None:
        self.llm = llm
        self.cache = cache or ResponseCache.disabled()

    @map_errors
    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        if not request.model:
            raise InvalidArgument("model is required: name a served LLM or adapter")
        if self.llm is None:
            raise NotFound(f"model {request.model!r} is not served: LLM serving is off on this server")
        params = sampling_from_grpc(request.params)
        which = request.WhichOneof("input")
        tenant = tenant_of(dict(context.invocation_metadata() or ()))
        try:
            if which == "messages":
                messages = [{"role": m.role, "content": m.content} for m in request.messages.messages]
                generation = await self.cache.submit(self.llm, request.model, messages=messages, params=params,
                                                     tenant=tenant)
            elif which == "prompt":
                generation = await self.cache.submit(self.llm, request.model, prompt=request.prompt, params=params,
                                                     tenant=tenant)
            else:
                raise InvalidArgument("give messages or a prompt")
        except Exception as exc:
            if is_overloaded(exc):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        cached = ((CACHE_HEADER, generation.cache),)  # exact | semantic | miss
        await context.send_initial_metadata(cached)
        context.set_trailing_metadata(cached)
        first, tokens = True, 0
        async with generation:  # the call cancelled (client gone): leaving the block cancels the generation
            async for chunk in generation:
                last = chunk.finish_reason is not None
                tokens += len(chunk.token_ids)
                if not chunk.text and not last:
                    continue  # held back (a partial character or a possible stop string); counted with the next
                response = pb.GenerateResponse(text=chunk.text, token_count=tokens)
                tokens = 0
                if first:
                    response.model, response.model_version = generation.model.name, generation.model.version
                    first = False
                if last:
                    response.finish_reason = chunk.finish_reason or ""
                    if chunk.usage is not None:
                        u = chunk.usage
                        response.usage.CopyFrom(pb.Usage(prompt_tokens=u.prompt_tokens,
                                                         completion_tokens=u.completion_tokens,
                                                         total_tokens=u.total_tokens,
                                                         cached_prompt_tokens=u.cached_prompt_tokens))
                    response.time_to_first_token_s = chunk.time_to_first_token_s or 0.0
                yield response
