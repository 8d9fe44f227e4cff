"""The gRPC generation door (flywheel.inference.v1.GenerationService): `Generate` streams an LLM's answer
to product backends. The request is validated and queued before the first message, so every refusal is a
status (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while the model
loads); a caller that cancels the call cancels its generation.

`model` may name an application: the answer is then grounded in its documents (apps.grounding), the first message
names the prompt template version and the last one carries the citations, or `refused` with the template's refusal
as the text when no retrieved passage supports an answer. Every generation is logged (genlog) with the request id
the first message carries. Answers go through the LLM response cache (flywheel/inference/cache): the initial and
trailing metadata `x-flywheel-cache` say exact, semantic or miss, and metadata `x-flywheel-tenant` names the tenant a
model call is cached for (an application's is its own)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from flywheel.common import auth
from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.common.rpc import map_errors
from flywheel.inference.apps.grounding import GroundedAnswers
from flywheel.inference.cache.service import HEADER as CACHE_HEADER
from flywheel.inference.cache.service import ResponseCache, tenant_of
from flywheel.inference.genlog import GenerationLog, GenerationRecord
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


def given_parameters(params: pb.SamplingParams) -> set[str]:
    """The sampling fields a request set (the others take an application's template defaults)."""
    given = {name for name in ("temperature", "top_p", "max_tokens", "seed") if params.HasField(name)}
    return given | ({"stop"} if params.stop else set())


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, llm: LLMService | None, *, answers: GroundedAnswers | None = None,
                 generation_log: GenerationLog | None = None, cache: ResponseCache | None = None) -> None:
        self.llm = llm
        self.answers = answers  # application calls (None: no applications on this server)
        self.generation_log = generation_log  # every generation to predictions.logged (None: not logged)
        self.cache = cache or ResponseCache.disabled()

    @map_errors
    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        started = time.perf_counter()
        if not request.model:
            raise InvalidArgument("model is required: name a served LLM or adapter")
        request_id = str(uuid.uuid4())
        if self.answers is not None and self.answers.serves(request.model):
            async for response in self._application(request, context, request_id):
                yield response
            return
        if self.llm is None:
            raise NotFound(f"model {request.model!r} is not served: LLM serving is off on this server")
        params = sampling_from_grpc(request.params)
        which = request.WhichOneof("input")
        messages: list[dict[str, str]] = []
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
        if self.generation_log is not None:
            generation = self.generation_log.watch(generation, GenerationRecord(
                request_id=request_id, door="grpc", served=generation.model, params=params, messages=messages,
                prompt_text=request.prompt if which == "prompt" else "", stream=True, user=request.user,
                started=started, cache=generation.cache))
        async for response in self._responses(generation, request_id, context):
            yield response

    async def _application(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext,
                           request_id: str) -> AsyncIterator[pb.GenerateResponse]:
        """An application call: grounded in its documents; citations on the last message."""
        assert self.answers is not None
        params = sampling_from_grpc(request.params)
        which = request.WhichOneof("input")
        if which == "messages":
            messages = [{"role": m.role, "content": m.content} for m in request.messages.messages]
        elif which == "prompt":
            messages = [{"role": "user", "content": request.prompt}]
        else:
            raise InvalidArgument("give messages or a prompt")
        call = await self.answers.resolve(request.model, messages, params, given_parameters(request.params))
        prompt = pb.PromptVersion(name=call.prompt.name, version=call.prompt.version)
        lookup = await self.cache.lookup(call.cache_request(messages))
        if lookup.hit:  # the stored answer and its stored citations
            assert lookup.answer is not None
            stored = [pb.Citation(**c) for c in lookup.answer.extra.get("citations", [])]
            call.restore(dict(lookup.answer.extra))
            generation: Any = self.cache.replay(lookup, call.served)
            if self.generation_log is not None:
                generation = self.generation_log.watch(generation, GenerationRecord(
                    request_id=request_id, door="grpc", served=call.served, params=call.params, messages=messages,
                    stream=True, user=request.user, call=call, started=call.started, cache=generation.cache))
            async for response in self._responses(generation, request_id, context, prompt=prompt, citations=stored):
                yield response
            return
        await self.answers.ground(call, messages)
        record = GenerationRecord(request_id=request_id, door="grpc", served=call.served, params=call.params,
                                  messages=messages, prompt_ids=call.prompt_ids, stream=True, user=request.user,
                                  call=call, started=call.started, cache=lookup.header)
        if call.refused:
            await context.send_initial_metadata(((CACHE_HEADER, lookup.header),))
            if self.generation_log is not None:
                self.generation_log.log_refusal(record, call.refusal or "")
            yield pb.GenerateResponse(text=call.refusal, finish_reason="stop", usage=pb.Usage(),
                                      model=call.served.name, model_version=call.served.version,
                                      request_id=request_id, refused=True, prompt=prompt)
            return
        try:
            generation = self.cache.record(lookup, self.answers.llm.submit(call.app.model, prompt_ids=call.prompt_ids,
                                                                           params=call.params))
        except Exception as exc:
            if is_overloaded(exc):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        generation.extra.update({"citations": [c.to_json() for c in call.citations],  # stored with the answer
                                 "grounding": call.grounding_json(), "application": call.application_json()})
        record.served = generation.model
        if self.generation_log is not None:
            generation = self.generation_log.watch(generation, record)
        citations = [pb.Citation(index=c.index, chunk_id=c.chunk_id, document_id=c.document_id, title=c.title,
                                 source=c.source, section=c.section, score=c.score, similarity=c.similarity)
                     for c in call.citations]
        async for response in self._responses(generation, request_id, context, prompt=prompt, citations=citations):
            yield response

    async def _responses(self, generation: Any, request_id: str, context: grpc.aio.ServicerContext, *,
                         prompt: pb.PromptVersion | None = None,
                         citations: list[pb.Citation] | None = None) -> AsyncIterator[pb.GenerateResponse]:
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
                    response.request_id = request_id
                    if prompt is not None:
                        response.prompt.CopyFrom(prompt)
                    first = False
                if last:
                    response.citations.extend(citations or [])
                    response.finish_reason = chunk.finish_reason or ""
                    if chunk.usage is not None:
                        u = chunk.usage
                        response.usage.CopyFrom(pb.Usage(prompt_tokens=u.prompt_tokens,
                                                         completion_tokens=u.completion_tokens,
                                                         total_tokens=u.total_tokens,
                                                         cached_prompt_tokens=u.cached_prompt_tokens))
                    response.time_to_first_token_s = chunk.time_to_first_token_s or 0.0
                yield response
