"""The gRPC generation door (flywheel.inference.v1.GenerationService): `Generate` streams an LLM's answer
to product backends. The request is validated and queued before the first message, so every refusal is a
status (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while the model
loads); a caller that cancels the call cancels its generation.

`model` may name an application: the answer is then grounded in its documents (apps.grounding), the first message
names the prompt template version and the last one carries the citations, or `refused` with the template's refusal
as the text when no retrieved passage supports an answer. Every generation is logged (genlog) with the request id
the first message carries. Answers go through the LLM response cache (flywheel/inference/cache): the initial and
trailing metadata `x-flywheel-cache` say exact, semantic or miss, and metadata `x-flywheel-tenant` names the tenant a
model call is cached for (an application's is its own).

A guarded application (apps.guarded) checks the last user turn before the cache and retrieval: blocked, the policy's
`blocked_input_response` says how (`completion`: one message with the policy's text and finish_reason
`content_filter`; `error`: status INVALID_ARGUMENT `content_filter: <message>`); the answer is streamed in checked
windows only (and cached only when every window passed), and a blocked window ends it with finish_reason
`content_filter`. Guard down or too slow for a fail_closed policy: UNAVAILABLE. The verdict ids go in the trailing
metadata (`x-flywheel-guard-verdict`: the input's, `x-flywheel-guard-output-verdict`: the last output window's or the
blocking one).

Pins (the evaluator's LLM gate): `model_version` answers with that version of the model (or of the application's
model) instead of its champion, loaded on demand next to it (LLMService.pin; the call waits for the load within its
deadline); `prompt_version` uses that version of an application's prompt template instead of its alias (only for an
application: INVALID_ARGUMENT on a plain model). A pinned call is evaluation traffic: it skips the response cache
(no lookup, nothing stored; `x-flywheel-cache` says miss), goes through the guard like any call, is logged with arm
PREDICTION_ARM_EVALUATION, and its first message names the model and prompt versions used. Pinning loads models
into memory, so it takes the `service` or `operator` role (admin too): a `predict`-only caller gets
PERMISSION_DENIED."""

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
from flywheel.inference.apps.guarded import (
    CONTENT_FILTER,
    OUTPUT_VERDICT_HEADER,
    VERDICT_HEADER,
    Guarding,
    context_chunks,
    guard_parameters,
    only_checked,
)
from flywheel.inference.cache.replay import MISS
from flywheel.inference.cache.service import HEADER as CACHE_HEADER
from flywheel.inference.cache.service import ResponseCache, tenant_of
from flywheel.inference.genlog import GenerationLog, GenerationRecord
from flywheel.inference.llm import is_overloaded
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.llm.service import LLMService
from flywheel.proto.inference.v1 import generation_service_pb2 as pb
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
# Anyone who may predict may generate; evaluation pins (model_version / prompt_version) load versions into memory and
# take PIN_ROLES (the evaluator's service token, an operator; admin passes every check), checked in Generate.
PIN_ROLES: auth.Roles = auth.WRITE  # service, operator
ROLES: dict[str, auth.Roles] = {"Generate": auth.PREDICT | PIN_ROLES}


def may_pin() -> bool:
    """Whether the caller may pin versions (a server without authentication: everyone)."""
    principal = auth.current_principal()
    return principal is None or principal.may(PIN_ROLES)


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
                 generation_log: GenerationLog | None = None, cache: ResponseCache | None = None,
                 guarding: Guarding | None = None) -> None:
        self.llm = llm
        self.answers = answers  # application calls (None: no applications on this server)
        self.guarding = guarding or Guarding(None)  # guard policies of applications
        self.generation_log = generation_log  # every generation to predictions.logged (None: not logged)
        self.cache = cache or ResponseCache.disabled()

    @map_errors
    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        started = time.perf_counter()
        if not request.model:
            raise InvalidArgument("model is required: name a served LLM or adapter")
        request_id = str(uuid.uuid4())
        if request.model_version < 0 or request.prompt_version < 0:
            raise InvalidArgument("model_version and prompt_version are registry versions (positive), or 0 for what "
                                  "is served")
        pinned = bool(request.model_version or request.prompt_version)
        if pinned and not may_pin():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "pinning a model_version or prompt_version (evaluation traffic) takes the service or "
                                "operator role; this token may only generate with what is served")
        if self.answers is not None and self.answers.serves(request.model):
            async for response in self._application(request, context, request_id):
                yield response
            return
        if request.prompt_version:
            raise InvalidArgument(f"prompt_version pins an application's prompt template; {request.model!r} is not an "
                                  "application")
        if self.llm is None:
            raise NotFound(f"model {request.model!r} is not served: LLM serving is off on this server")
        params = sampling_from_grpc(request.params)
        which = request.WhichOneof("input")
        messages: list[dict[str, str]] = []
        tenant = tenant_of(dict(context.invocation_metadata() or ()))
        if which == "messages":
            messages = [{"role": m.role, "content": m.content} for m in request.messages.messages]
        elif which != "prompt":
            raise InvalidArgument("give messages or a prompt")
        prompt = request.prompt if which == "prompt" else None
        try:
            if pinned:  # evaluation traffic: that version, never the cache
                await self.llm.pin(request.model, request.model_version)
                generation = self.cache.bypass(self.llm.submit(
                    request.model, messages=messages if prompt is None else None, prompt=prompt, params=params,
                    version=request.model_version))
            else:
                generation = await self.cache.submit(self.llm, request.model, messages=messages if prompt is None
                                                     else None, prompt=prompt, params=params, tenant=tenant)
        except Exception as exc:
            if is_overloaded(exc):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        if self.generation_log is not None:
            generation = self.generation_log.watch(generation, GenerationRecord(
                request_id=request_id, door="grpc", served=generation.model, params=params, messages=messages,
                prompt_text=request.prompt if which == "prompt" else "", stream=True, user=request.user,
                started=started, cache=generation.cache, pinned_model_version=request.model_version))
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
        app = self.answers.catalog.require(request.model)
        pinned_model = None
        if request.model_version:  # a pin is checked (and loaded) first: an unknown version is NOT_FOUND
            pinned_model = await self.answers.served(app, request.model_version)
        # The input rail first: before the cache, retrieval and generation; from here on the redacted turn.
        checked = await self.guarding.check_input(app, messages, request_id=request_id)
        guard_params = guard_parameters(checked)
        trailing: tuple[tuple[str, str], ...] = ()
        if checked.verdict is not None:
            trailing = ((VERDICT_HEADER, checked.verdict.verdict_id),)
            context.set_trailing_metadata(trailing)
        if checked.blocked:
            message = checked.message()
            self._log_blocked_input(app, checked, params, request, request_id, message, guard_params, pinned_model)
            if checked.as_error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{CONTENT_FILTER}: {message}")
            yield pb.GenerateResponse(text=message, finish_reason=CONTENT_FILTER, usage=pb.Usage(), model=app.model,
                                      model_version=request.model_version, request_id=request_id)
            return
        messages = checked.messages
        call = await self.answers.resolve(request.model, messages, params, given_parameters(request.params),
                                          model_version=request.model_version, prompt_version=request.prompt_version)
        prompt = pb.PromptVersion(name=call.prompt.name, version=call.prompt.version)
        # A pinned call (evaluation traffic) neither looks the cache up nor is stored in it.
        lookup = None if call.pinned else await self.cache.lookup(call.cache_request(messages, checked.policy))
        if lookup is not None and lookup.hit:  # the stored answer and its stored citations
            assert lookup.answer is not None
            stored = [pb.Citation(**c) for c in lookup.answer.extra.get("citations", [])]
            call.restore(dict(lookup.answer.extra))
            generation: Any = self.cache.replay(lookup, call.served)
            if self.generation_log is not None:
                generation = self.generation_log.watch(generation, GenerationRecord(
                    request_id=request_id, door="grpc", served=call.served, params=call.params, messages=messages,
                    stream=True, user=request.user, call=call, started=call.started, cache=generation.cache,
                    guard=guard_params))
            async for response in self._responses(generation, request_id, context, prompt=prompt, citations=stored,
                                                  trailing=trailing):
                yield response
            return
        await self.answers.ground(call, messages)
        record = GenerationRecord(request_id=request_id, door="grpc", served=call.served, params=call.params,
                                  messages=messages, prompt_ids=call.prompt_ids, stream=True, user=request.user,
                                  call=call, started=call.started, cache=lookup.header if lookup else MISS,
                                  guard=guard_params, pinned_model_version=request.model_version,
                                  pinned_prompt_version=request.prompt_version)
        if call.refused:
            await context.send_initial_metadata(((CACHE_HEADER, record.cache),))
            if self.generation_log is not None:
                self.generation_log.log_refusal(record, call.refusal or "")
            yield pb.GenerateResponse(text=call.refusal, finish_reason="stop", usage=pb.Usage(),
                                      model=call.served.name, model_version=call.served.version,
                                      request_id=request_id, refused=True, prompt=prompt)
            return
        try:
            model: Any = self.answers.llm.submit(call.app.model, prompt_ids=call.prompt_ids, params=call.params,
                                                 version=call.model_version)
        except Exception as exc:
            if is_overloaded(exc):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        guarded = None
        if checked.guarded:  # only checked windows leave, are cached and logged
            model = guarded = self.guarding.stream(model, app, checked, request_id=request_id,
                                                   context=context_chunks(call), log_params=record.guard)
        generation = self.cache.record(lookup, model) if lookup is not None else self.cache.bypass(model)
        if guarded is not None:
            only_checked(generation, guarded)
        generation.extra.update({"citations": [c.to_json() for c in call.citations],  # stored with the answer
                                 "grounding": call.grounding_json(), "application": call.application_json()})
        record.served = generation.model
        if self.generation_log is not None:
            generation = self.generation_log.watch(generation, record)
        citations = [pb.Citation(index=c.index, chunk_id=c.chunk_id, document_id=c.document_id, title=c.title,
                                 source=c.source, section=c.section, score=c.score, similarity=c.similarity)
                     for c in call.citations]
        try:
            async for response in self._responses(generation, request_id, context, prompt=prompt, citations=citations,
                                                  trailing=trailing):
                yield response
        finally:
            if guarded is not None and guarded.state.verdicts:
                last = guarded.state.blocked or guarded.state.verdicts[-1]
                context.set_trailing_metadata(((CACHE_HEADER, generation.cache), *trailing,
                                               (OUTPUT_VERDICT_HEADER, last.verdict_id)))

    def _log_blocked_input(self, app: Any, checked: Any, params: SamplingParams, request: pb.GenerateRequest,
                           request_id: str, message: str, guard_params: dict[str, str], served: Any = None) -> None:
        if self.generation_log is None or self.answers is None or self.answers.llm is None:
            return
        if served is None:
            try:
                served = self.answers.llm.model(app.model)
            except Exception:  # the model is not served: nothing to log it under
                return
        record = GenerationRecord(request_id=request_id, door="grpc", served=served, params=params,
                                  messages=checked.messages, stream=True, user=request.user, application=app.name,
                                  guard=guard_params, pinned_model_version=request.model_version,
                                  pinned_prompt_version=request.prompt_version)
        self.generation_log.log(record, completion="" if checked.as_error else message, finish_reason=CONTENT_FILTER,
                                prompt_tokens=0, completion_tokens=0, time_to_first_token_s=None)

    async def _responses(self, generation: Any, request_id: str, context: grpc.aio.ServicerContext, *,
                         prompt: pb.PromptVersion | None = None, citations: list[pb.Citation] | None = None,
                         trailing: tuple[tuple[str, str], ...] = ()) -> AsyncIterator[pb.GenerateResponse]:
        cached = ((CACHE_HEADER, generation.cache),)  # exact | semantic | miss
        await context.send_initial_metadata(cached)
        context.set_trailing_metadata(cached + trailing)
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
