"""Applications on inference's HTTP port: the operator API, and the OpenAI-shaped answers of application calls.

    GET    /v1/applications           list            reader, operator, service (or admin)
    GET    /v1/applications/{name}    one             reader, operator, service
    PUT    /v1/applications/{name}    create/replace  operator (or admin); 201 created, 200 replaced
    DELETE /v1/applications/{name}    delete          operator (or admin)

Errors in OpenAI's shape: 400 invalid_request_error naming the field (bad JSON, bad field, a prompt alias, model
or collection that does not resolve), 401/403, 404 `application_not_found`, 409 `application_name_taken` (an LLM or
adapter has that name; a prompt template may).

`/v1/chat/completions` with `model` = an application's name answers as a normal chat completion, plus, at the top
level (the `openai` client keeps unknown fields: `completion.model_extra["citations"]`):

    "citations": [{"index": 1, "chunk_id", "document_id", "title", "source", "section", "score", "similarity"}],
    "grounding": {"supported": true, "refused": false, "reason": "supported" | "no_supporting_passage",
                  "best_similarity": 0.61, "min_similarity": 0.25},
    "application": {"name", "model", "model_version", "prompt", "prompt_version", "collection", "tenant"}

Streamed, the chunk that carries `finish_reason` carries them (and the trailing usage chunk, when asked for). A
refusal is an ordinary answer whose text is the template's refusal: finish_reason `stop`, no citations, usage 0
(the model did not run).

Guarded applications (apps.guarded) add a top-level `guard` object: `{"policy", "policy_version", "input":
{verdict_id, action, blocked, escalated, rule, category}, "output": {...}, "output_checks"}` (streamed: on the
chunk with `finish_reason`), and the input verdict id in the `x-flywheel-guard-verdict` header. A blocked input
answers per the policy: HTTP 400 `{"error": {"code": "content_filter", ...}, "guard": ...}` or a completion of the
policy's message with finish_reason `content_filter` (usage 0: the model did not run). An answer the output rails
block ends with finish_reason `content_filter` (non-streaming: the policy's message as the text). Guard down or too
slow for a fail_closed policy: 503 `guard_unavailable` (streamed: an error event; nothing unchecked is sent).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel.common import auth, errors
from flywheel.common.auth import Authenticator, bind_principal, unbind_principal
from flywheel.inference.apps.catalog import ApplicationCatalog
from flywheel.inference.apps.domain import check_name, parse_application
from flywheel.inference.apps.grounding import GroundedAnswers
from flywheel.inference.apps.guarded import (
    CONTENT_FILTER,
    VERDICT_HEADER,
    GuardedStream,
    Guarding,
    GuardUnavailable,
    InputCheck,
    context_chunks,
    guard_parameters,
    only_checked,
)
from flywheel.inference.cache.service import HEADER as CACHE_HEADER
from flywheel.inference.cache.service import ResponseCache
from flywheel.inference.genlog import GenerationLog, GenerationRecord
from flywheel.inference.openai_api import OpenAIError, _json, _sse, to_openai_error, usage_json

log = logging.getLogger(__name__)

ROLES: dict[str, auth.Roles] = {"read": auth.READ, "write": auth.OPERATE}
# Request fields whose absence lets the prompt template's default parameters apply.
GIVEN = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
         "max_completion_tokens": "max_tokens", "stop": "stop", "seed": "seed"}
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
              "prompt_tokens_details": {"cached_tokens": 0}}


def given_parameters(body: dict[str, Any]) -> set[str]:
    return {name for key, name in GIVEN.items() if body.get(key) is not None}


def _app_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, errors.NotFound):
        return OpenAIError(404, str(exc), code="application_not_found")
    if isinstance(exc, errors.AlreadyExists):
        return OpenAIError(409, str(exc), code="application_name_taken")
    return to_openai_error(exc)


class ApplicationsDoor:
    """The operator REST API over the catalog."""

    def __init__(self, catalog: ApplicationCatalog, authenticator: Authenticator | None) -> None:
        self.catalog = catalog
        self.authenticator = authenticator

    def guarded(self, what: str, endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        allowed = ROLES[what]

        async def run(request: Request) -> Response:
            bound = None
            try:
                if self.authenticator is not None:
                    verb = "read" if what == "read" else "change"
                    principal = await self.authenticator.authorize(request.headers.get("authorization"), allowed,
                                                                   f"{verb} applications")
                    bound = bind_principal(principal)
                return await endpoint(request)
            except Exception as exc:
                return _app_error(exc).response()
            finally:
                if bound is not None:
                    unbind_principal(bound)
        return run

    def routes(self) -> list[Route]:
        return [Route("/v1/applications", self.guarded("read", self.list), methods=["GET"]),
                Route("/v1/applications/{name}", self.guarded("read", self.get), methods=["GET"]),
                Route("/v1/applications/{name}", self.guarded("write", self.put), methods=["PUT"]),
                Route("/v1/applications/{name}", self.guarded("write", self.delete), methods=["DELETE"])]

    async def list(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [a.to_json() for a in self.catalog.all()]})

    async def get(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        return JSONResponse(self.catalog.require(name).to_json())

    async def put(self, request: Request) -> Response:
        name = request.path_params["name"]
        app = parse_application(name, await _json(request))
        stored, created = await self.catalog.put(app)
        return JSONResponse(stored.to_json(), status_code=201 if created else 200)

    async def delete(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        await self.catalog.delete(name)
        return JSONResponse({"id": name, "object": "application", "deleted": True})


class ApplicationChat:
    """Answers `/v1/chat/completions` for application names (the OpenAI door hands them over)."""

    def __init__(self, answers: GroundedAnswers, genlog: GenerationLog | None,
                 cache: ResponseCache | None = None, guarding: Guarding | None = None) -> None:
        self.answers = answers
        self.genlog = genlog
        self.cache = cache or ResponseCache.disabled()
        self.guarding = guarding or Guarding(None)

    def serves(self, name: str) -> bool:
        return self.answers.serves(name)

    def model_entries(self) -> list[dict[str, Any]]:
        """The applications, as /v1/models lists them."""
        return [{"id": a.name, "object": "model", "created": int(a.created_at.timestamp()) if a.created_at else 0,
                 "owned_by": "flywheel", "kind": "application", "model": a.model, "prompt": str(a.prompt),
                 "collection": a.retrieval.collection, "tenant": a.retrieval.tenant,
                 "description": a.description} for a in self.answers.catalog.all()]

    async def respond(self, chat: Any, body: dict[str, Any]) -> Response:
        """`chat`: the OpenAI door's parsed ChatRequest. A guarded application's input rail runs first (a blocked
        input is never answered, from the cache or otherwise; a redacted one is keyed and answered on its redacted
        text). The response cache then answers before retrieval when it can (keyed on the application, its prompt
        and model versions, its retrieval settings and the conversation); a miss is grounded, generated (through
        the output rails) and stored with its citations: what the client received, never unchecked text."""
        try:
            return await self._respond(chat, body)
        except GuardUnavailable as exc:
            return _guard_error(exc).response()

    async def _respond(self, chat: Any, body: dict[str, Any]) -> Response:
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        app = self.answers.catalog.require(chat.model)
        # The input rail first: before the cache, retrieval and generation; from here on the redacted turn.
        checked = await self.guarding.check_input(app, chat.messages, request_id=ident)
        guard_headers = {VERDICT_HEADER: checked.verdict.verdict_id} if checked.verdict is not None else {}
        guard_extra = {"guard": checked.to_json()} if checked.guarded else {}
        if checked.blocked:
            return self._blocked_input(checked, ident, created, chat, guard_extra, guard_headers)
        messages = checked.messages
        call = await self.answers.resolve(chat.model, messages, chat.params, given_parameters(body))
        lookup = await self.cache.lookup(call.cache_request(messages, checked.policy))
        headers = {CACHE_HEADER: lookup.header, **guard_headers}
        if lookup.hit:  # stored after its output was checked (see guarded.only_checked)
            return await self._cached(self.cache.replay(lookup, call.served), call, chat, messages, ident, created,
                                      checked, headers)
        await self.answers.ground(call, messages)
        record = GenerationRecord(request_id=ident, door="openai", served=call.served, params=call.params,
                                  messages=messages, prompt_ids=call.prompt_ids, stream=chat.stream,
                                  user=chat.user, call=call, started=call.started, cache=lookup.header,
                                  guard=guard_parameters(checked))
        extra = {"citations": [c.to_json() for c in call.citations], "grounding": call.grounding_json(),
                 "application": call.application_json()}
        if call.refused:  # the template's refusal: fixed text, nothing for the output rails to check
            assert call.refusal is not None
            if self.genlog is not None:
                self.genlog.log_refusal(record, call.refusal)
            fingerprint = _fingerprint(call.served)
            extra |= guard_extra
            if chat.stream:
                return _event_stream(self._refusal_stream(call.refusal, ident, created, chat, fingerprint, extra),
                                     headers)
            return JSONResponse(_completion(ident, created, chat.model, fingerprint, call.refusal, "stop", ZERO_USAGE,
                                            extra), headers=headers)
        generation: Any = self.answers.llm.submit(call.app.model, prompt_ids=call.prompt_ids, params=call.params)
        record.served = generation.model  # the version that runs (a promotion may have landed since prepare)
        guarded: GuardedStream | None = None
        if checked.guarded:  # the output rails sit between the model and the client, the cache and the log
            generation = guarded = self.guarding.stream(generation, app, checked, request_id=ident,
                                                        context=context_chunks(call), log_params=record.guard,
                                                        whole=not chat.stream)
        recording = self.cache.record(lookup, generation)
        recording.extra.update(extra)  # stored with the answer: a hit answers with the same citations (no verdicts)
        if guarded is not None:
            only_checked(recording, guarded)
        generation = recording
        if self.genlog is not None:
            generation = self.genlog.watch(generation, record)

        def final_extra() -> dict[str, Any]:
            if guarded is None:
                return {**extra, **guard_extra}
            return {**extra, "guard": {**guard_extra["guard"], **guarded.guard_json()}}
        return await self._answer(generation, chat, ident, created, final_extra, headers)

    async def _cached(self, generation: Any, call: Any, chat: Any, messages: list[dict[str, str]], ident: str,
                      created: int, checked: InputCheck, headers: dict[str, str]) -> Response:
        """A cache hit: the stored answer with its stored citations and grounding, logged as a hit."""
        extra = {k: v for k, v in generation.extra.items() if k != "guard"}
        call.restore(extra)  # the stored citations, for the log
        if checked.guarded:
            extra["guard"] = {**(checked.to_json() or {}), "output": None, "output_cached": True}
        if self.genlog is not None:
            generation = self.genlog.watch(generation, GenerationRecord(
                request_id=ident, door="openai", served=call.served, params=call.params, messages=messages,
                stream=chat.stream, user=chat.user, call=call, started=call.started, cache=generation.cache,
                guard=guard_parameters(checked)))
        return await self._answer(generation, chat, ident, created, lambda: extra, headers)

    async def _answer(self, generation: Any, chat: Any, ident: str, created: int,
                      final_extra: Callable[[], dict[str, Any]], headers: dict[str, str]) -> Response:
        fingerprint = _fingerprint(generation.model)
        if chat.stream:
            return _event_stream(self._stream(generation, ident, created, chat, fingerprint, final_extra), headers)
        completion = await generation.collect()
        return JSONResponse(_completion(ident, created, chat.model, fingerprint, completion.text,
                                        completion.finish_reason, usage_json(completion.usage), final_extra()),
                            headers=headers)

    def _blocked_input(self, checked: InputCheck, ident: str, created: int, chat: Any, guard_extra: dict[str, Any],
                       headers: dict[str, str]) -> Response:
        """The input rail blocked: the model never runs; logged with finish_reason content_filter."""
        message = checked.message()
        app = self.answers.catalog.require(chat.model)
        if self.genlog is not None and self.answers.llm is not None:
            try:
                served = self.answers.llm.model(app.model)
            except Exception:  # the model is not served: nothing to log it under
                served = None
            if served is not None:
                record = GenerationRecord(request_id=ident, door="openai", served=served, params=chat.params,
                                          messages=checked.messages, stream=chat.stream, user=chat.user,
                                          application=app.name, guard=guard_parameters(checked))
                self.genlog.log(record, completion=message if not checked.as_error else "",
                                finish_reason=CONTENT_FILTER, prompt_tokens=0, completion_tokens=0,
                                time_to_first_token_s=None)
        if checked.as_error:
            error = OpenAIError(400, message, code=CONTENT_FILTER, param="messages")
            return JSONResponse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                           "code": error.code}, **guard_extra}, status_code=400, headers=headers)
        fingerprint = f"fw-{app.name}"
        extra = {"citations": [], "grounding": None, "application": {"name": app.name, "model": app.model},
                 **guard_extra}
        if chat.stream:
            return _event_stream(self._fixed_stream(message, CONTENT_FILTER, ident, created, chat, fingerprint, extra),
                                 headers)
        return JSONResponse(_completion(ident, created, chat.model, fingerprint, message, CONTENT_FILTER, ZERO_USAGE,
                                        extra), headers=headers)

    async def _stream(self, generation: Any, ident: str, created: int, chat: Any, fingerprint: str,
                      final_extra: Callable[[], dict[str, Any]]) -> AsyncIterator[bytes]:
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                "system_fingerprint": fingerprint}
        async with generation:  # leaving early (the client went away) cancels the generation
            yield _sse(_chunk(head, {"role": "assistant", "content": ""}, None, chat.include_usage))
            usage = None
            try:
                async for piece in generation:
                    if piece.text:
                        yield _sse(_chunk(head, {"content": piece.text}, None, chat.include_usage))
                    if piece.finish_reason is not None:
                        usage = piece.usage
                        extra = final_extra()
                        yield _sse({**_chunk(head, {}, piece.finish_reason, chat.include_usage), **extra})
            except Exception as exc:  # after the 200: the error goes in the stream, as OpenAI does
                error = _guard_error(exc) if isinstance(exc, GuardUnavailable) else to_openai_error(exc)
                yield _sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                      "code": error.code}})
                return
            if chat.include_usage and usage is not None:
                yield _sse({**head, "choices": [], "usage": usage_json(usage), **final_extra()})
            yield b"data: [DONE]\n\n"

    def _refusal_stream(self, text: str, ident: str, created: int, chat: Any, fingerprint: str,
                        extra: dict[str, Any]) -> AsyncIterator[bytes]:
        return self._fixed_stream(text, "stop", ident, created, chat, fingerprint, extra)

    async def _fixed_stream(self, text: str, finish: str, ident: str, created: int, chat: Any, fingerprint: str,
                            extra: dict[str, Any]) -> AsyncIterator[bytes]:
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                "system_fingerprint": fingerprint}
        yield _sse(_chunk(head, {"role": "assistant", "content": ""}, None, chat.include_usage))
        yield _sse(_chunk(head, {"content": text}, None, chat.include_usage))
        yield _sse({**_chunk(head, {}, finish, chat.include_usage), **extra})
        if chat.include_usage:
            yield _sse({**head, "choices": [], "usage": ZERO_USAGE, **extra})
        yield b"data: [DONE]\n\n"


def _guard_error(exc: GuardUnavailable) -> OpenAIError:
    return OpenAIError(503, str(exc), type="server_error", code="guard_unavailable")


def _fingerprint(served: Any) -> str:
    return f"fw-{served.name}-v{served.version}" if served.kind == "adapter" else \
        f"fw-{served.base_name}-v{served.base_version}"


def _chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None, include_usage: bool) -> dict[str, Any]:
    data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if include_usage:
        data["usage"] = None
    return data


def _completion(ident: str, created: int, model: str, fingerprint: str, text: str, finish: str,
                usage: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage, **extra}


def _event_stream(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
