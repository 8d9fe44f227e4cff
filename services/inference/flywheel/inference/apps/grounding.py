"""Grounded answers: what an application call does before the model runs (no HTTP, gRPC or SQL here).

1. The application (the catalog's copy), its prompt template version (`name@alias`, following promotions) and its
   model (the served LLM or adapter name: whatever version is champion now).
2. Retrieve the application's collection (and tenant, k, weights, filter) for the last user turn.
3. The grounding rule: a passage supports an answer when its cosine similarity to the question is at least the
   application's `min_similarity`. No supporting passage (or nothing retrieved): the answer is the template's
   refusal, the model does not run, nothing is cited. Otherwise only supporting passages go into the prompt.
4. Fit the passages into the model's context: the answer's max_tokens are reserved first, then passages are
   added in retrieval order while they fit; when not even the first fits whole, it is cut (at a token boundary)
   to what fits. The passages in the prompt are the citations, numbered as the prompt numbers them ([1], [2]).
5. The chat the model sees: the template's system turn (a client's own system messages appended to it), the
   earlier turns as sent, and the template's user turn with {context} and {question} filled.
Request parameters the client did not set take the template's defaults (temperature, top_p, max_tokens, stop,
seed).

Pins (evaluation traffic, gRPC Generate): `model_version` answers with that version of the application's model
(LLMService.pin: loaded on demand next to the champion), `prompt_version` uses that version of its prompt template
instead of the alias the application binds.

Citations are decided by retrieval, not by the model's text: a small model may cite badly or not at all, but what
it was given, and so what its answer can rest on, is exactly the cited passages.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flywheel.common.clients.retriever import metadata_filter
from flywheel.common.errors import InvalidArgument, NotFound, Unavailable
from flywheel.common.prompt_templates import ContextChunk, PromptTemplate
from flywheel.inference.apps.catalog import ApplicationCatalog
from flywheel.inference.apps.domain import Application
from flywheel.inference.apps.prompts import PromptResolver, ResolvedPrompt
from flywheel.inference.cache.fingerprint import CacheRequest
from flywheel.inference.llm.sampling import SamplingParams

log = logging.getLogger(__name__)

PARAMETER_NAMES = ("temperature", "top_p", "max_tokens", "stop", "seed")
MIN_CUT_TOKENS = 16  # a first passage cut shorter than this is not worth sending
ELLIPSIS = " ..."


@dataclass(frozen=True)
class Citation:
    index: int
    chunk_id: str
    document_id: str
    title: str
    source: str
    section: str
    score: float
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "chunk_id": self.chunk_id, "document_id": self.document_id, "title": self.title,
                "source": self.source, "section": self.section, "score": round(self.score, 6),
                "similarity": round(self.similarity, 6)}


@dataclass
class GroundedCall:
    """An application call, ready to answer: either `refusal` (text to send as is) or `prompt_ids` to generate."""

    app: Application
    prompt: ResolvedPrompt
    served: Any  # llm.service.ServedModel
    question: str
    params: SamplingParams
    retrieved: list[Any] = field(default_factory=list)  # flywheel.retriever.v1.RetrievedChunk, best first
    citations: list[Citation] = field(default_factory=list)
    best_similarity: float = 0.0
    refusal: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)  # what the model sees
    prompt_ids: list[int] = field(default_factory=list)
    embedding_model: str = ""
    started: float = field(default_factory=time.perf_counter)
    model_version: int = 0  # a pinned version of the application's model (0: its champion)
    prompt_pinned: bool = False  # `prompt` is a pinned template version, not the alias's

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    @property
    def pinned(self) -> bool:
        """Evaluation traffic: a model or prompt version pinned (not cached, logged with arm EVALUATION)."""
        return bool(self.model_version) or self.prompt_pinned

    def grounding_json(self) -> dict[str, Any]:
        return {"supported": not self.refused, "refused": self.refused,
                "reason": "no_supporting_passage" if self.refused else "supported",
                "best_similarity": round(self.best_similarity, 6),
                "min_similarity": self.app.retrieval.min_similarity}

    def restore(self, extra: dict[str, Any]) -> None:
        """A cache hit: the citations stored with the answer are this call's (for the log)."""
        self.citations = [Citation(**c) for c in extra.get("citations", [])]

    def cache_request(self, messages: list[dict[str, str]], guard_policy: Any = None) -> CacheRequest:
        """What the response cache keys this call on: the served model, the application, its prompt template
        version, its retrieval settings and tenant, the guard policy version that checked it (`guard_policy`: a
        clients.ports.GuardPolicy, None when not guarded), and the conversation as the client sent it (before
        retrieval: a hit saves the retrieval too)."""
        r = self.app.retrieval
        return CacheRequest.of(self.served, self.params, messages=messages, tenant=r.tenant,
                               application=self.app.name, prompt_name=self.prompt.name,
                               prompt_version=self.prompt.version, retrieval=dataclasses.asdict(r),
                               # an answer released under one guard policy version is not one under another
                               depends_on={f"guard-policy:{guard_policy.application}": guard_policy.version}
                               if guard_policy is not None else {})

    def application_json(self) -> dict[str, Any]:
        return {"name": self.app.name, "model": self.served.name, "model_version": self.served.version,
                "prompt": self.prompt.name, "prompt_version": self.prompt.version,
                "collection": self.app.retrieval.collection, "tenant": self.app.retrieval.tenant}


def with_defaults(params: SamplingParams, given: Iterable[str], defaults: dict[str, Any]) -> SamplingParams:
    """`params` with what the request did not set (`given`: names in PARAMETER_NAMES) taken from `defaults`."""
    given = set(given)
    changes: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in given or key not in PARAMETER_NAMES:
            continue
        changes[key] = tuple(value) if key == "stop" else value
    return dataclasses.replace(params, **changes).validate() if changes else params


def question_of(messages: list[dict[str, str]]) -> str:
    if not messages or messages[-1].get("role") != "user":
        raise InvalidArgument("an application answers the last user turn: the last message must be the user's")
    question = messages[-1]["content"]
    if not question.strip():
        raise InvalidArgument("the last user message is empty")
    return question


class GroundedAnswers:
    """`prepare` an application call; the doors then stream `prompt_ids` through the LLM service (or send the
    refusal) and log the call."""

    def __init__(self, catalog: ApplicationCatalog, prompts: PromptResolver, retriever: Any, llm: Any, *,
                 answer_tokens: int = 256, max_tokens_cap: int = 1024) -> None:
        self.catalog = catalog
        self.prompts = prompts
        self.retriever = retriever
        self.llm = llm
        self.answer_tokens = answer_tokens
        self.max_tokens_cap = max_tokens_cap

    def serves(self, name: str) -> bool:
        return self.catalog.get(name) is not None

    async def prepare(self, name: str, messages: list[dict[str, str]], params: SamplingParams,
                      given: Iterable[str] = ()) -> GroundedCall:
        """`resolve` then `ground`: a call ready to answer."""
        call = await self.resolve(name, messages, params, given)
        await self.ground(call, messages)
        return call

    async def resolve(self, name: str, messages: list[dict[str, str]], params: SamplingParams,
                      given: Iterable[str] = (), *, model_version: int = 0, prompt_version: int = 0) -> GroundedCall:
        """The application, its served model and prompt version, and the parameters: everything an answer depends
        on but the passages (what the response cache keys on), without retrieving. `model_version` /
        `prompt_version`: pins (see the module docstring; 0: what the application serves)."""
        started = time.perf_counter()
        app = self.catalog.require(name)
        question = question_of(messages)
        served = await self.served(app, model_version)
        if prompt_version:
            prompt = await self.prompts.version(app.prompt.name, prompt_version)
        else:
            try:
                prompt = await self.prompts.resolve(app.prompt.name, app.prompt.alias)
            except Unavailable as exc:
                raise Unavailable(f"application {name!r} cannot answer: {exc}") from None
        params = with_defaults(params, given, dict(prompt.template.parameters))
        return GroundedCall(app=app, prompt=prompt, served=served, question=question, params=params, started=started,
                            model_version=model_version, prompt_pinned=bool(prompt_version))

    async def served(self, app: Application, model_version: int = 0) -> Any:
        """The ServedModel answering for `app`: its model's champion, or the pinned version (loaded on demand)."""
        if self.llm is None:
            raise Unavailable(f"application {app.name!r} cannot answer: LLM serving is off on this server")
        if model_version:
            return await self.llm.pin(app.model, model_version)
        try:
            return self.llm.model(app.model)
        except NotFound:
            raise Unavailable(f"application {app.name!r} cannot answer: its model {app.model!r} is not served (it "
                              "has no champion loaded here)") from None

    async def ground(self, call: GroundedCall, messages: list[dict[str, str]]) -> None:
        """Retrieve the passages and fit them into the prompt (`call.prompt_ids`), or set the refusal."""
        template = call.prompt.template
        supporting: list[Any] = []
        if template.grounded:
            supporting = await self._retrieve(call)
            if not supporting:
                call.refusal = template.refusal
                return
        self._fit(call, template, messages, supporting)

    async def _retrieve(self, call: GroundedCall) -> list[Any]:
        r = call.app.retrieval
        flt = metadata_filter(**r.filter) if r.filter else None  # type: ignore[arg-type]
        if self.retriever is None:
            raise Unavailable(f"application {call.app.name!r} cannot answer: no retriever is configured "
                              "(FLYWHEEL_RETRIEVER_ADDR)")
        try:
            response = await self.retriever.retrieve(r.collection, text=call.question, k=r.k, tenant=r.tenant,
                                                     filter=flt, weights=r.weights, rrf_k=r.rrf_k)
        except NotFound as exc:
            raise Unavailable(f"application {call.app.name!r} cannot answer: {exc}") from None
        call.retrieved = list(response.chunks)
        if response.HasField("embedding_model"):
            call.embedding_model = f"{response.embedding_model.name}:{response.embedding_model.version}"
        call.best_similarity = max((c.similarity for c in call.retrieved), default=0.0)
        return [c for c in call.retrieved if c.similarity >= r.min_similarity]

    def _messages(self, call: GroundedCall, template: PromptTemplate, messages: list[dict[str, str]],
                  context: str) -> list[dict[str, str]]:
        system, user = template.render(call.question, context=context, application=call.app.name)
        earlier = messages[:-1]
        systems = [system] if system.strip() else []
        systems += [m["content"] for m in earlier if m["role"] == "system"]
        out = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
        out += [m for m in earlier if m["role"] != "system"]
        out.append({"role": "user", "content": user})
        return out

    def _fit(self, call: GroundedCall, template: PromptTemplate, messages: list[dict[str, str]],
             supporting: list[Any]) -> None:
        name = call.app.model
        reserve = call.params.max_tokens or min(self.answer_tokens, self.max_tokens_cap)
        budget = call.served.context_length - reserve
        version = call.model_version
        base = self.llm.chat_prompt(name, self._messages(call, template, messages, ""), version)
        if len(base) >= budget:
            raise InvalidArgument(f"the conversation takes {len(base)} tokens with application {call.app.name!r}'s "
                                  f"template; with {reserve} reserved for the answer, model {name!r} has room for "
                                  f"{max(budget, 0)}: shorten the conversation or lower max_tokens")
        chunks = [_context_chunk(c) for c in supporting]
        room = budget - len(base)
        used: list[tuple[Any, ContextChunk]] = []
        for hit, chunk in zip(supporting, chunks, strict=True):
            n = len(used) + 1
            separator = template.context_separator if used else ""
            cost = len(self.llm.encode(name, separator + template.render_item(n, chunk), version))
            if cost <= room:
                used.append((hit, chunk))
                room -= cost
                continue
            if not used:  # not even the best passage fits whole: send what fits of it
                cut = self._cut(name, template, chunk, cost - room, version)
                if cut is not None:
                    used.append((hit, cut))
            break
        while True:
            rendered = self._messages(call, template, messages, template.render_context([c for _, c in used]))
            ids = self.llm.chat_prompt(name, rendered, version)
            if len(ids) <= budget or not used:
                break
            used.pop()  # token merges across boundaries made it a little longer than counted
        if supporting and not used:
            raise InvalidArgument(f"no retrieved passage fits in model {name!r}'s context next to this conversation "
                                  f"and {reserve} tokens for the answer: shorten the conversation or lower max_tokens")
        call.prompt_ids = ids
        call.params = dataclasses.replace(call.params, max_tokens=reserve)
        call.messages = rendered
        call.citations = [Citation(index=i, chunk_id=h.chunk_id, document_id=h.document_id, title=h.title,
                                   source=h.source, section=h.section, score=h.score, similarity=h.similarity)
                          for i, (h, _) in enumerate(used, start=1)]

    def _cut(self, name: str, template: PromptTemplate, chunk: ContextChunk, over: int,
             version: int = 0) -> ContextChunk | None:
        tokenizer = self.llm.tokenizer(name, version)
        ids = tokenizer.encode(chunk.text, add_special_tokens=False)
        keep = len(ids) - over - len(self.llm.encode(name, ELLIPSIS, version)) - 2
        if keep < MIN_CUT_TOKENS:
            return None
        return dataclasses.replace(chunk, text=tokenizer.decode(ids[:keep]).rstrip() + ELLIPSIS)


def _context_chunk(hit: Any) -> ContextChunk:
    return ContextChunk(text=hit.text, title=hit.title, section=hit.section, source=hit.source,
                        document_id=hit.document_id)
