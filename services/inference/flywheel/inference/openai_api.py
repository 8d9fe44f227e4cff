"""The OpenAI-compatible REST door on inference's HTTP port: `GET /v1/models`, `POST /v1/chat/completions`
(JSON, or server-sent events with `stream: true`) and `POST /v1/embeddings` (through the embedder), so the
stock `openai` client works unchanged with `base_url=http://<inference>/v1` and a Flywheel token as api_key.

Roles: chat and embeddings take `predict` (like predictions); the model list `predict` or a reading role.
Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`:

    400 invalid_request_error   bad JSON, empty messages, bad role, prompt over the context, bad parameter
    401 invalid_api_key         missing or unknown token        403 insufficient_permissions  wrong role
    404 model_not_found         model not served                429 rate_limit_exceeded       queue full
    503 model_not_ready         model loading / embedder down   500 server_error              a bug (logged)

A streamed answer is validated and queued before the first byte: every error above comes with its status,
never inside a 200 stream. A client that goes away mid-stream cancels its generation (its batch row is
freed at the next decode step).

Chat answers go through the LLM response cache (flywheel/inference/cache): header `x-flywheel-cache: exact |
semantic | miss` on every chat answer, streamed or not; request header `x-flywheel-tenant` names the tenant.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel.common import auth, errors
from flywheel.common.auth import Authenticator, AuthError, bind_principal, unbind_principal
from flywheel.common.clients.ports import TextEmbedder
from flywheel.inference.cache.service import HEADER as CACHE_HEADER
from flywheel.inference.cache.service import ResponseCache, tenant_of
from flywheel.inference.llm import is_overloaded
from flywheel.inference.llm.sampling import SamplingParams

log = logging.getLogger(__name__)

ROLES: dict[str, auth.Roles] = {"models": auth.PREDICT | auth.READ, "chat": auth.PREDICT, "embeddings": auth.PREDICT}
MAX_EMBEDDING_INPUTS = 256
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "modalities", "prediction")
Endpoint = Callable[[Request], Any]


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="flywheel"'} if self.status == 401 else None
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=headers)


def bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def to_openai_error(exc: BaseException, *, param_of_model: str = "model") -> OpenAIError:
    """A domain or auth error as the OpenAI error it stands for."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, AuthError):
        if exc.status == 401:
            return OpenAIError(401, str(exc), code="invalid_api_key")
        return OpenAIError(403, str(exc), type="permission_error", code="insufficient_permissions")
    if isinstance(exc, errors.NotFound):
        return OpenAIError(404, str(exc), param=param_of_model, code="model_not_found")
    if isinstance(exc, errors.InvalidArgument):
        return OpenAIError(400, str(exc))
    if is_overloaded(exc):
        return OpenAIError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded")
    if isinstance(exc, errors.Unavailable):
        return OpenAIError(503, str(exc), type="server_error", code="model_not_ready")
    if isinstance(exc, errors.FlywheelError):
        return OpenAIError(409 if isinstance(exc, errors.FailedPrecondition) else 400, str(exc))
    log.exception("unhandled error in the OpenAI door")
    return OpenAIError(500, "internal error; see the server log", type="server_error", code="internal_error")


# -- request parsing ------------------------------------------------------------------------------------


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"{key} must be a number, got {value!r}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {value!r}", key)
    return value


def _content(i: int, content: Any) -> str:
    """A message's text: a string, or a list of text parts (what newer clients send)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content[{j}]: only text parts are supported", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def parse_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with role and content", "messages")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system turn
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad(f"messages[{i}].role {role!r} is not one of system, developer, user, assistant", "messages")
        messages.append({"role": role, "content": _content(i, m.get("content"))})
    return messages


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    user: str


def parse_chat(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a non-empty string", "model")
    for key in UNSUPPORTED:
        if body.get(key):
            raise bad(f"{key} is not supported by this server", key)
    if body.get("logprobs"):
        raise bad("logprobs is not supported by this server", "logprobs")
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, 0.0) != 0.0:
            raise bad(f"{key} is not supported by this server (only 0)", key)
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise bad(f"n must be 1 (one choice per request), got {n}", "n")
    temperature = _number(body, "temperature", 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise bad(f"temperature must be between 0 and 2, got {temperature:g}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise bad(f"top_p must be in (0, 1], got {top_p:g}", "top_p")
    max_tokens, key = _integer(body, "max_completion_tokens"), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _integer(body, "max_tokens"), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise bad(f"{key} must be at least 1, got {max_tokens}", key)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise bad("stop must be a string or a list of strings", "stop")
    seed = _integer(body, "seed")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user must be a string", "user")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad("stream_options.include_usage must be a boolean", "stream_options")
    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stops,
                                seed=seed).validate()
    except errors.InvalidArgument as exc:
        raise bad(str(exc), "stop" if "stop" in str(exc) else "seed" if "seed" in str(exc) else None) from None
    return ChatRequest(model, parse_messages(body.get("messages")), params, stream, include_usage, user or "")


def parse_embeddings(body: Any) -> tuple[str, list[str], str, int | None]:
    """(model, texts, encoding_format, dimensions)."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a non-empty string", "model")
    value = body.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        texts = list(value)
    elif isinstance(value, list) and value and all(isinstance(t, int) or isinstance(t, list) for t in value):
        raise bad("input as token ids is not supported: send text", "input")
    else:
        raise bad("input must be a string or a non-empty list of strings", "input")
    if any(not t for t in texts):
        raise bad("input strings must not be empty", "input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise bad(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(texts)}", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad(f"encoding_format must be float or base64, got {encoding!r}", "encoding_format")
    dimensions = _integer(body, "dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user must be a string", "user")
    return model, texts, encoding, dimensions


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise bad(f"the body is not valid JSON: {exc}") from None


# -- answers --------------------------------------------------------------------------------------------


def usage_json(usage: Any) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens}}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def encode_vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, what the openai client decodes
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


class OpenAIDoor:
    """The routes, over the LLM service (None: LLM serving off) and an embedder (None: not configured)."""

    def __init__(self, llm: Any, embedder: TextEmbedder | None, authenticator: Authenticator | None,
                 *, embedder_models: Callable[[], Any] | None = None, applications: Any = None,
                 generation_log: Any = None, cache: ResponseCache | None = None) -> None:
        self.llm = llm
        self.cache = cache or ResponseCache.disabled()  # the LLM response cache (flywheel/inference/cache)
        self.embedder = embedder
        self.authenticator = authenticator
        self.embedder_models = embedder_models
        # apps.http.ApplicationChat: answers for application names (None: no applications on this server).
        self.applications = applications
        # genlog.GenerationLog: every generation to predictions.logged (None: not logged).
        self.generation_log = generation_log

    def guarded(self, what: str, endpoint: Endpoint) -> Endpoint:
        allowed = ROLES[what]

        async def run(request: Request) -> Response:
            bound = None
            try:
                if self.authenticator is not None:
                    principal = await self.authenticator.authorize(request.headers.get("authorization"), allowed,
                                                                   f"call /v1/{what}")
                    bound = bind_principal(principal)
                return await endpoint(request)
            except Exception as exc:
                return to_openai_error(exc).response()
            finally:
                if bound is not None:
                    unbind_principal(bound)
        return run

    def routes(self) -> list[Route]:
        return [Route("/v1/models", self.guarded("models", self.list_models)),
                Route("/v1/models/{name:path}", self.guarded("models", self.get_model)),
                Route("/v1/chat/completions", self.guarded("chat", self.chat), methods=["POST"]),
                Route("/v1/embeddings", self.guarded("embeddings", self.embeddings), methods=["POST"])]

    # -- models ---------------------------------------------------------------------------------------

    async def _all_models(self) -> list[dict[str, Any]]:
        out = []
        for m in self.llm.models() if self.llm is not None else []:
            out.append({"id": m.name, "object": "model", "created": int(m.loaded_at), "owned_by": "flywheel",
                        "kind": m.kind, "version": m.version, "base_model": m.base_name,
                        "base_version": m.base_version, "context_length": m.context_length,
                        "quantization": m.quantization})
        if self.embedder_models is not None:
            try:
                listed = await self.embedder_models()
            except errors.FlywheelError as exc:  # the LLMs are still listed when the embedder is down
                log.warning("embedder models not listed", extra={"error": str(exc)})
                listed = []
            seen = set()
            for e in listed:
                if e.model.name in seen or not e.champion:
                    continue
                seen.add(e.model.name)
                out.append({"id": e.model.name, "object": "model", "created": 0, "owned_by": "flywheel",
                            "kind": "embedding", "version": e.model.version, "dimensions": e.dimensions,
                            "context_length": e.max_tokens})
        if self.applications is not None:
            out += self.applications.model_entries()
        return out

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": await self._all_models()})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        for m in await self._all_models():
            if m["id"] == name:
                return JSONResponse(m)
        if self.llm is not None:
            self.llm.model(name)  # Unavailable while it loads, else NotFound naming what is served
        raise errors.NotFound(f"model {name!r} is not served")

    # -- chat -----------------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await _json(request)
        chat = parse_chat(body)
        if self.applications is not None and self.applications.serves(chat.model):
            return await self.applications.respond(chat, body)
        if self.llm is None:
            raise errors.NotFound(f"model {chat.model!r} is not served: LLM serving is off on this server")
        # The response cache answers a hit (replayed, streamed or not) or submits and stores the miss once done.
        generation = await self.cache.submit(self.llm, chat.model, messages=chat.messages, params=chat.params,
                                             tenant=tenant_of(request.headers))
        cached = {CACHE_HEADER: generation.cache}  # exact | semantic | miss
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        generation = self._logged(generation, ident, chat, started)
        if chat.stream:
            return StreamingResponse(self._stream(generation, ident, created, chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **cached})
        completion = await generation.collect()
        return JSONResponse(headers=cached, content={
            "id": ident, "object": "chat.completion", "created": created, "model": chat.model,
            "system_fingerprint": self._fingerprint(generation),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text, "refusal": None},
                         "logprobs": None, "finish_reason": completion.finish_reason}],
            "usage": usage_json(completion.usage)})

    def _logged(self, generation: Any, ident: str, chat: ChatRequest, started: float) -> Any:
        """`generation`, logged to predictions.logged when it ends (when a generation log is configured)."""
        if self.generation_log is None:
            return generation
        from flywheel.inference.genlog import GenerationRecord

        return self.generation_log.watch(generation, GenerationRecord(
            request_id=ident, door="openai", served=generation.model, params=chat.params, messages=chat.messages,
            stream=chat.stream, user=chat.user, started=started, cache=getattr(generation, "cache", "miss")))

    @staticmethod
    def _fingerprint(generation: Any) -> str:
        m = generation.model
        return f"fw-{m.name}-v{m.version}" if m.kind == "adapter" else f"fw-{m.base_name}-v{m.base_version}"

    async def _stream(self, generation: Any, ident: str, created: int, chat: ChatRequest) -> AsyncIterator[bytes]:
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                "system_fingerprint": self._fingerprint(generation)}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if chat.include_usage:
                data["usage"] = None
            return data

        async with generation:  # leaving early (the client went away: this task is cancelled) cancels it
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            usage = None
            try:
                async for piece in generation:
                    if piece.text:
                        yield _sse(chunk({"content": piece.text}, None))
                    if piece.finish_reason is not None:
                        usage = piece.usage
                        yield _sse(chunk({}, piece.finish_reason))
            except Exception as exc:  # after the 200: the error goes in the stream, as OpenAI does
                error = to_openai_error(exc)
                yield _sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                      "code": error.code}})
                return
            if chat.include_usage and usage is not None:
                yield _sse({**head, "choices": [], "usage": usage_json(usage)})
            yield b"data: [DONE]\n\n"

    # -- embeddings -----------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        model, texts, encoding, dimensions = parse_embeddings(await _json(request))
        if self.embedder is None:
            raise errors.NotFound(f"model {model!r} is not served: no embedder is configured "
                                  "(FLYWHEEL_EMBEDDER_ADDR)")
        result = await self.embedder.embed(texts, model_name=model)
        if dimensions is not None and dimensions != result.dimensions:
            raise bad(f"model {model!r} gives {result.dimensions} dimensions; it cannot shorten them to "
                      f"{dimensions}", "dimensions")
        tokens = sum(result.token_counts)
        return JSONResponse({
            "object": "list", "model": result.model_name,
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(list(v), encoding)}
                     for i, v in enumerate(result.vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
