"""Generations as the doors consume them, around the response cache: `CachedGeneration` replays a hit (one
chunk with the whole answer, then the end, so a streamed hit is SSE chunks + [DONE] like any answer), and
`RecordingGeneration` passes a real generation through and hands its answer to the cache once it finished
(a final chunk arrived: "stop" or "length"). A generation cancelled, or failed, before its end is not stored.

Both look like `llm.service.Generation` (async iterator of GenerationChunk, `collect()`, `cancel()`, async
context manager, `model`, `prompt_tokens`, `max_tokens`) plus `cache` ("exact", "semantic" or "miss") and
`extra` (JSON stored with the answer: what an application adds, e.g. its citations)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flywheel.inference.cache.entries import CachedAnswer

if TYPE_CHECKING:
    from flywheel.inference.llm.engine import Completion, GenerationChunk

MISS = "miss"


def _engine_types() -> Any:
    # The engine module is imported by now (a model is served); importing it here keeps `cache` light.
    from flywheel.inference.llm import engine

    return engine


class CachedGeneration:
    """A cache hit, replayed."""

    def __init__(self, served: Any, answer: CachedAnswer, kind: str, started: float) -> None:
        self.model = served
        self.answer = answer
        self.cache = kind
        self.extra = dict(answer.extra)
        self.prompt_tokens = answer.prompt_tokens
        self.max_tokens = answer.completion_tokens
        self._started = started
        self._done = False

    def _usage(self) -> Any:
        # Every prompt token was served from a cache: none was computed.
        return _engine_types().Usage(self.answer.prompt_tokens, self.answer.completion_tokens,
                                     cached_prompt_tokens=self.answer.prompt_tokens)

    def __aiter__(self) -> CachedGeneration:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        self._done = True
        return _engine_types().GenerationChunk(self.answer.text, list(self.answer.token_ids),
                                               self.answer.finish_reason, self._usage(),
                                               time.perf_counter() - self._started)

    async def collect(self) -> Completion:
        elapsed = time.perf_counter() - self._started
        return _engine_types().Completion(self.answer.text, list(self.answer.token_ids), self.answer.finish_reason,
                                          self._usage(), elapsed, elapsed, cache=self.cache)

    def cancel(self) -> None:
        self._done = True

    async def __aenter__(self) -> CachedGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class RecordingGeneration:
    """A real generation; `on_finished(text, token_ids, finish_reason, usage, extra)` runs once when its final
    chunk went by (None: nothing is recorded, e.g. a bypassed sampled request)."""

    def __init__(self, inner: Any, on_finished: Callable[[str, list[int], str, Any, Mapping[str, Any]], None] | None,
                 *, cache: str = MISS) -> None:
        self.inner = inner
        self.model = inner.model
        self.prompt_ids = getattr(inner, "prompt_ids", [])  # the rendered prompt, for the generation log
        self.prompt_tokens = inner.prompt_tokens
        self.max_tokens = inner.max_tokens
        self.cache = cache
        self.extra: dict[str, Any] = {}
        self._on_finished = on_finished
        self._iterator: Any = None
        self._parts: list[str] = []
        self._ids: list[int] = []
        self._started = time.perf_counter()

    def __aiter__(self) -> RecordingGeneration:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._iterator is None:
            self._iterator = self.inner.__aiter__()
        chunk = await self._iterator.__anext__()
        self._parts.append(chunk.text)
        self._ids += chunk.token_ids
        if chunk.finish_reason is not None and self._on_finished is not None:
            finished, self._on_finished = self._on_finished, None
            finished("".join(self._parts), self._ids, chunk.finish_reason, chunk.usage, self.extra)
        return chunk

    async def collect(self) -> Completion:
        async with self:
            async for chunk in self:
                if chunk.finish_reason is not None:
                    return _engine_types().Completion(
                        "".join(self._parts), list(self._ids), chunk.finish_reason, chunk.usage,
                        chunk.time_to_first_token_s or 0.0, time.perf_counter() - self._started, cache=self.cache)
        from flywheel.common.errors import Unavailable

        raise Unavailable("the generation ended without a final chunk")

    def cancel(self) -> None:
        self._on_finished = None
        self.inner.cancel()

    async def __aenter__(self) -> RecordingGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
