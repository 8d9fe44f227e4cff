"""The generation log: one `predictions.logged` event per generation, whichever door (OpenAI-compatible REST or gRPC
Generate) and whether the request named a model or an application, published like the prediction log: through the
BoundedPublisher, so an answer never waits on Kafka (what does not fit is dropped and counted).

The event's `model` is the served version that generated (an adapter's own version for an adapter name), and its
`llm` part (LlmExchange) carries: the client's messages, the rendered prompt the model saw, the completion, token
counts, time to first token, finish reason (`stop`, `length`, `refusal` when an application answered with its
template's refusal, `cancelled` when the client went away, `error`), and for application calls the application,
the prompt template version, the chunks put into the prompt with their cosine similarity to the question, the cited
documents' titles and the tenant; `cache` says `miss` unless a cache answered; `cost` is the estimate from the
per-1k-token prices in the settings. `parameters` holds the sampling parameters, the door, whether it streamed,
the base model of an adapter, and for applications the grounding decision and the best similarity retrieved; for
guarded applications the guard's policy version and verdict ids (`guard_*`).

`arm` is PREDICTION_ARM_CHAMPION, or PREDICTION_ARM_EVALUATION for a request that pinned a model or prompt version
(gRPC Generate's `model_version` / `prompt_version`: the evaluator's candidates), which online scoring and drift
detection ignore; `parameters` then says which (`pinned_model_version`, `pinned_prompt_version`).

The storage floor: every text the event carries (messages, rendered prompt, completion, user) goes through
`flywheel.common.redaction.redact` first, guarded or not, so raw PII never reaches Kafka (nor the tables fed from
it) even when no guard policy applies. Guarded applications log the guard's redacted text on top of that, and
`finish_reason` `content_filter` when the guard blocked the input or the answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flywheel.common.events import Event
from flywheel.common.kafka import BoundedPublisher
from flywheel.common.redaction import redact
from flywheel.common.telemetry import current_traceparent
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.predlog import SOURCE, sampled
from flywheel.proto.events.v1 import common_pb2, predictions_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """Per 1,000 tokens, in the settings' currency."""

    prompt: float = 0.0
    completion: float = 0.0


@dataclass
class GenerationRecord:
    """What is known about a generation before it runs."""

    request_id: str
    door: str  # "openai" or "grpc"
    served: Any  # llm.service.ServedModel
    params: SamplingParams
    messages: list[dict[str, str]] = field(default_factory=list)  # as the client sent them
    prompt_text: str = ""  # a plain text prompt (gRPC `prompt`), when there are no messages
    prompt_ids: list[int] = field(default_factory=list)
    stream: bool = False
    user: str = ""
    call: Any = None  # apps.grounding.GroundedCall of an application call
    cache: str = "miss"
    started: float = field(default_factory=time.perf_counter)
    application: str = ""  # an application call that never got a GroundedCall (its input blocked by the guard)
    guard: dict[str, str] = field(default_factory=dict)  # guard_* parameters of a guarded call
    pinned_model_version: int = 0  # evaluation traffic: the version pinned (0: none)
    pinned_prompt_version: int = 0

    @property
    def pinned(self) -> bool:
        return bool(self.pinned_model_version or self.pinned_prompt_version)


class GenerationLog:
    def __init__(self, publisher: BoundedPublisher | None, llm: Any, *, prices: dict[str, Price] | None = None,
                 default_price: Price = Price(), sample_rate: Callable[[str], float] = lambda name: 1.0) -> None:
        self.publisher = publisher
        self.llm = llm
        self.prices = prices or {}
        self.default_price = default_price
        self.sample_rate = sample_rate

    def price(self, served: Any) -> Price:
        return self.prices.get(served.name) or self.prices.get(served.base_name) or self.default_price

    def cost(self, served: Any, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.price(served)
        return (prompt_tokens * p.prompt + completion_tokens * p.completion) / 1000.0

    def watch(self, generation: Any, record: GenerationRecord) -> LoggedGeneration:
        """`generation` (llm.service.Generation), logged once it ends, is cancelled or fails."""
        if not record.prompt_ids:
            record.prompt_ids = list(getattr(generation, "prompt_ids", []) or [])
        return LoggedGeneration(generation, record, self)

    def log(self, record: GenerationRecord, *, completion: str, finish_reason: str, prompt_tokens: int,
            completion_tokens: int, time_to_first_token_s: float | None) -> None:
        if self.publisher is None:
            return
        try:
            event = self._event(record, completion=completion, finish_reason=finish_reason,
                                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                time_to_first_token_s=time_to_first_token_s)
        except Exception:  # a log must never fail an answer
            log.exception("generation log event not built", extra={"request_id": record.request_id})
            return
        if event is not None:
            self.publisher.publish(event)

    def _rendered(self, record: GenerationRecord) -> str:
        if not record.prompt_ids:
            return record.prompt_text
        try:
            version = record.served.version if record.pinned_model_version else 0
            return self.llm.tokenizer(record.served.name, version).decode(record.prompt_ids,
                                                                          skip_special_tokens=False)
        except Exception:  # unloaded meanwhile
            return record.prompt_text

    def _event(self, record: GenerationRecord, *, completion: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, time_to_first_token_s: float | None) -> Event | None:
        served, call, p = record.served, record.call, record.params
        rate = self.sample_rate(call.app.name if call is not None else served.name)
        if not sampled(record.request_id, rate):
            return None
        parameters = {"door": record.door, "stream": str(record.stream).lower(), "temperature": f"{p.temperature:g}",
                      "top_p": f"{p.top_p:g}"}
        if p.max_tokens is not None:
            parameters["max_tokens"] = str(p.max_tokens)
        if p.seed is not None:
            parameters["seed"] = str(p.seed)
        if p.stop:
            parameters["stop"] = json.dumps(list(p.stop))
        if record.user:
            parameters["user"] = _clean(record.user)
        parameters.update(record.guard)
        if record.pinned_model_version:
            parameters["pinned_model_version"] = str(record.pinned_model_version)
        if record.pinned_prompt_version:
            parameters["pinned_prompt_version"] = str(record.pinned_prompt_version)
        if served.kind == "adapter":
            parameters["base_model"] = f"{served.base_name}:{served.base_version}"
        exchange = predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role=m["role"], content=_clean(m["content"]))
                      for m in record.messages],
            prompt=_clean(self._rendered(record)), completion=_clean(completion), prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, finish_reason=finish_reason,
            time_to_first_token_ms=(time_to_first_token_s or 0.0) * 1000.0, cache=record.cache,
            cache_hit=record.cache in ("exact", "semantic"),
            cost=self.cost(served, prompt_tokens, completion_tokens))
        if call is not None:
            exchange.application = call.app.name
            exchange.prompt_template.CopyFrom(common_pb2.ModelRef(name=call.prompt.name, version=call.prompt.version))
            exchange.tenant = call.app.retrieval.tenant
            exchange.context_chunk_ids.extend(c.chunk_id for c in call.citations)
            exchange.context_chunk_scores.extend(c.similarity for c in call.citations)
            titles: list[str] = []
            for c in call.citations:
                if c.title not in titles:
                    titles.append(c.title)
            exchange.cited_titles.extend(titles)
            parameters["grounding"] = "no_supporting_passage" if call.refused else "supported"
            parameters["best_similarity"] = f"{call.best_similarity:.4f}"
            parameters["min_similarity"] = f"{call.app.retrieval.min_similarity:g}"
            parameters["retrieved"] = str(len(call.retrieved))
            parameters["collection"] = call.app.retrieval.collection
            if call.embedding_model:
                parameters["embedding_model"] = call.embedding_model
        elif record.application:
            exchange.application = record.application
        payload = predictions_pb2.PredictionLogged(
            request_id=record.request_id, model=common_pb2.ModelRef(name=served.name, version=served.version),
            arm=predictions_pb2.PREDICTION_ARM_EVALUATION if record.pinned else predictions_pb2.PREDICTION_ARM_CHAMPION,
            latency_ms=(time.perf_counter() - record.started) * 1000.0,
            traceparent=current_traceparent(), sample_rate=rate, llm=exchange, parameters=parameters)
        payload.timestamp.FromDatetime(datetime.now(UTC))
        return Event(PREDICTIONS_LOGGED, record.request_id, payload, SOURCE)

    def log_refusal(self, record: GenerationRecord, text: str) -> None:
        self.log(record, completion=text, finish_reason="refusal", prompt_tokens=0, completion_tokens=0,
                 time_to_first_token_s=None)


def _clean(text: str) -> str:
    """The storage floor: PII masked whatever the application's policy (see the module docstring)."""
    return redact(text).text if text else text


class LoggedGeneration:
    """A Generation that logs itself once: at its last chunk, when it is cancelled (the client went away) or when
    it fails. Same interface: async iteration of chunks, `collect()`, `cancel()`, `async with`."""

    def __init__(self, generation: Any, record: GenerationRecord, genlog: GenerationLog) -> None:
        self.generation = generation
        self.model = generation.model
        self.prompt_tokens = generation.prompt_tokens
        self.max_tokens = generation.max_tokens
        self.prompt_ids = record.prompt_ids
        self.cache = getattr(generation, "cache", record.cache)  # exact | semantic | miss
        self.record = record
        self.genlog = genlog
        self._parts: list[str] = []
        self._tokens = 0
        self._logged = False

    def _log(self, finish_reason: str, usage: Any = None, ttft: float | None = None) -> None:
        if self._logged:
            return
        self._logged = True
        self.genlog.log(self.record, completion="".join(self._parts), finish_reason=finish_reason,
                        prompt_tokens=usage.prompt_tokens if usage is not None else self.prompt_tokens,
                        completion_tokens=usage.completion_tokens if usage is not None else self._tokens,
                        time_to_first_token_s=ttft)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self.generation:
                self._parts.append(chunk.text)
                self._tokens += len(chunk.token_ids)
                if chunk.finish_reason is not None:
                    self._log(chunk.finish_reason, chunk.usage, chunk.time_to_first_token_s)
                yield chunk
        except Exception:
            self._log("error")
            raise
        except BaseException:  # cancelled: the task (client gone) or the iteration closed early
            self._log("cancelled")
            raise

    async def collect(self) -> Any:
        try:
            completion = await self.generation.collect()
        except Exception:
            self._log("error")
            raise
        except BaseException:
            self._log("cancelled")
            raise
        self._parts = [completion.text]
        self._log(completion.finish_reason, completion.usage, completion.time_to_first_token_s)
        return completion

    def cancel(self) -> None:
        self.generation.cancel()
        self._log("cancelled")

    async def __aenter__(self) -> LoggedGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
