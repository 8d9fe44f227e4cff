"""The response cache's use cases (no transport, no SQL): look a request up (memory, then the database's
exact key, then the semantic neighbours inside its context key), replay a hit, record a finished miss,
evict what a promotion made stale, purge expired rows.

A cache failure (database or embedder down, slow past `lookup_timeout_s`) never fails a request: it is
logged and counted, and the request is generated as a miss.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from flywheel.common.clients.ports import TextEmbedder
from flywheel.common.tasks import cancel_and_wait, within
from flywheel.inference.cache.entries import CachedAnswer, MemoryCache
from flywheel.inference.cache.fingerprint import CacheRequest, cacheable
from flywheel.inference.cache.replay import MISS, CachedGeneration, RecordingGeneration
from flywheel.inference.cache.store import CacheStore, Neighbour, QuestionVector

if TYPE_CHECKING:
    from flywheel.inference.llm.sampling import SamplingParams

log = logging.getLogger(__name__)

EXACT, SEMANTIC, BYPASS = "exact", "semantic", "bypass"
HEADER = "x-flywheel-cache"  # exact | semantic | miss, on every chat answer (HTTP header, gRPC metadata)
TENANT_HEADER = "x-flywheel-tenant"  # the tenant a request is served for (empty: the default tenant)

RESPONSES = Counter("flywheel_llm_cache_responses_total",
                    "Chat requests by where the answer came from: exact, semantic (cache hits), miss (generated and "
                    "stored), bypass (sampled without a seed, or the cache is off: generated, not stored).",
                    ["outcome"])
LOOKUPS = Counter("flywheel_llm_cache_lookups_total",
                  "Lookups of each cache (exact: memory then database; semantic: nearest question in the context) "
                  "by result (hit or miss).", ["cache", "result"])
LOOKUP_SECONDS = Histogram("flywheel_llm_cache_lookup_seconds", "Time a lookup took, by how it ended.", ["outcome"],
                           buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
SIMILARITY = Histogram("flywheel_llm_cache_semantic_similarity",
                       "Cosine similarity of the nearest cached question in the context (hit or not): tune "
                       "llm_cache_semantic_threshold with it.",
                       buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0))
STORED = Counter("flywheel_llm_cache_stored_total", "Finished generations stored in the response cache.")
EVICTED = Counter("flywheel_llm_cache_evicted_total",
                  "Entries removed: promotion (memory and database), lru (memory), purge (database: expired or "
                  "over llm_cache_max_rows).", ["reason"])
ERRORS = Counter("flywheel_llm_cache_errors_total", "Cache operations that failed (the request went on as a miss).",
                 ["stage"])
MEMORY_ENTRIES = Gauge("flywheel_llm_cache_memory_entries", "Entries in the in-process exact cache.")
MEMORY_BYTES = Gauge("flywheel_llm_cache_memory_bytes", "About the bytes the in-process exact cache holds.")

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
SENTENCE = re.compile(r"[^.?!]+")
WORD = re.compile(r"[A-Za-z0-9][\w'-]*")
PRONOUNS = frozenset({"i", "i'm", "i've", "i'd", "i'll"})


def numbers(text: str) -> frozenset[str]:
    """The numbers a question mentions ("$1,000" and "1000" alike)."""
    return frozenset(m.group().replace(",", "") for m in NUMBER.finditer(text))


def words(text: str) -> frozenset[str]:
    """Every word (lower case, without a possessive 's) and number of `text`."""
    found = {w.lower()[:-2] if w.lower().endswith("'s") else w.lower() for w in WORD.findall(text)}
    return frozenset(found | numbers(text))


def same_key_terms(asked: str, cached: str) -> bool:
    """Whether two questions name the same numbers and names: the key terms of each (see `key_terms`) occur as
    words of the other, whatever their case (a question typed in lower case still matches its capitalized
    twin; "Everyday Debit" never matches "Plus Debit")."""
    return numbers(asked) == numbers(cached) and key_terms(asked) <= words(cached) and \
        key_terms(cached) <= words(asked)


def key_terms(text: str) -> frozenset[str]:
    """What a paraphrase keeps and a near-duplicate with another answer changes: the numbers, and the names,
    codes and acronyms (words with a capital letter that do not start a sentence: "Plus Debit", "D80", "PIN").
    Embeddings put "the daily limit of a Plus Debit card" and "... of an Everyday Debit card" very close (0.92
    with all-MiniLM-L6-v2), closer than most real paraphrases; the answers differ."""
    terms = set(numbers(text))
    for sentence in SENTENCE.findall(text):
        for word in WORD.findall(sentence)[1:]:
            lowered = word.lower()
            if word != lowered and lowered not in PRONOUNS:
                terms.add(lowered[:-2] if lowered.endswith("'s") else lowered)
    return frozenset(terms)


@dataclass
class CacheSettings:
    """How the response cache works (from InferenceSettings' llm_cache_* fields)."""

    enabled: bool = True
    exact_max_entries: int = 10_000
    exact_max_bytes: int = 64 * 1024 * 1024
    semantic_enabled: bool = True
    semantic_threshold: float = 0.9
    semantic_same_key_terms: bool = True
    ttl_s: float = 86_400.0
    embedding_model: str = ""  # empty: the embedder's default model
    lookup_timeout_s: float = 1.0
    max_rows: int = 200_000
    purge_interval_s: float = 60.0
    max_pending_writes: int = 256


@dataclass
class Lookup:
    """The outcome of a lookup: a hit (`answer`), or what to store once the miss is generated."""

    kind: str  # exact | semantic | miss | bypass
    request: CacheRequest
    started: float
    answer: CachedAnswer | None = None
    similarity: float | None = None
    matched_question: str | None = None
    key: str = ""
    context: str | None = None
    question: str | None = None
    vector: QuestionVector | None = None

    @property
    def hit(self) -> bool:
        return self.answer is not None

    @property
    def header(self) -> str:
        """What `x-flywheel-cache` says for this request: exact, semantic or miss."""
        return self.kind if self.hit else MISS


class ResponseCache:
    def __init__(self, settings: CacheSettings, store: CacheStore | None = None,
                 embedder: TextEmbedder | None = None) -> None:
        """`store` None: memory only (no sharing, no semantic cache); `embedder` None: no semantic cache."""
        self.settings = settings
        self.store = store if settings.enabled else None
        self.embedder = embedder if settings.enabled and settings.semantic_enabled and store is not None else None
        self.memory = MemoryCache(settings.exact_max_entries, settings.exact_max_bytes)
        self._writes: set[asyncio.Task] = set()
        self._evictions: set[asyncio.Task] = set()
        self._purger: asyncio.Task | None = None
        self._seen: dict[str, int] = {}  # the version of each model the last request was served by

    @classmethod
    def disabled(cls) -> ResponseCache:
        return cls(CacheSettings(enabled=False))

    async def start(self) -> None:
        if self.store is not None:
            await self.store.open()
            self._purger = asyncio.create_task(self._purge_loop(), name="llm-cache-purge")

    async def stop(self) -> None:
        await cancel_and_wait([self._purger])
        await self.settle()
        if self.store is not None:
            await self.store.close()

    async def flush(self) -> None:
        """Until the database writes scheduled so far have finished (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def settle(self) -> None:
        """Until the writes and evictions scheduled so far have finished (tests, shutdown)."""
        while self._writes or self._evictions:
            await asyncio.gather(*list(self._writes), *list(self._evictions), return_exceptions=True)

    # -- lookups ----------------------------------------------------------------------------------------

    async def lookup(self, request: CacheRequest) -> Lookup:
        started = time.perf_counter()
        if self.settings.enabled:
            self._notice_versions(request)
        if not self.settings.enabled or not cacheable(request.params):
            RESPONSES.labels(BYPASS).inc()
            return Lookup(BYPASS, request, started)
        key = request.exact_key()
        found = self.memory.get(key)
        if found is not None:
            return self._hit(Lookup(EXACT, request, started, found, key=key), level="memory")
        lookup = Lookup(MISS, request, started, key=key, context=request.context_key(),
                        question=request.last_user_turn())
        if self.store is None:
            return self._miss(lookup)
        try:
            return await within(self._shared(lookup), self.settings.lookup_timeout_s)
        except Exception as exc:  # TimeoutError included: the request goes on, generated
            ERRORS.labels("lookup").inc()
            log.warning("response cache lookup failed; generating", extra={"error": repr(exc),
                                                                           "model": request.model})
            return self._miss(lookup)

    async def _shared(self, lookup: Lookup) -> Lookup:
        assert self.store is not None
        embedding = None
        if self.embedder is not None and lookup.context is not None and lookup.question:
            embedding = asyncio.create_task(self._embed(lookup.question))  # meanwhile, the exact row
        try:
            found = await self.store.get(lookup.key)
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        if found is not None:
            if embedding is not None:
                embedding.cancel()
            self.memory.put(lookup.key, found)
            lookup.answer, lookup.kind = found, EXACT
            return self._hit(lookup, level="database")
        LOOKUPS.labels(EXACT, "miss").inc()
        if embedding is None:
            return self._miss(lookup)
        lookup.vector = await embedding
        if lookup.vector is None:
            return self._miss(lookup)
        assert lookup.context is not None
        neighbours = await self.store.nearest(lookup.context, lookup.request.tenant, lookup.vector)
        best = self._semantic_match(lookup, neighbours)
        if best is None:
            LOOKUPS.labels(SEMANTIC, "miss").inc()
            return self._miss(lookup)
        lookup.answer, lookup.kind = best.answer, SEMANTIC
        lookup.similarity, lookup.matched_question = best.similarity, best.question
        return self._hit(lookup, level="semantic")

    async def _embed(self, question: str) -> QuestionVector | None:
        assert self.embedder is not None
        try:
            result = await self.embedder.embed([question], model_name=self.settings.embedding_model)
        except Exception as exc:
            ERRORS.labels("embed").inc()
            log.warning("embedding for the semantic cache failed; exact cache only",
                        extra={"error": repr(exc)})
            return None
        return QuestionVector(result.model_name, result.model_version, result.vectors[0])

    def _semantic_match(self, lookup: Lookup, neighbours: list[Neighbour]) -> Neighbour | None:
        """The nearest neighbour above the threshold (and, with semantic_same_key_terms, naming the same numbers
        and names). The SQL scoped them to this context key, tenant and embedding model version already; the
        answer's own tenant and model version are checked again here, so a scope bug could not leak one."""
        request = lookup.request
        if neighbours:
            SIMILARITY.observe(neighbours[0].similarity)
        asked = lookup.question or ""
        for n in neighbours:
            if n.similarity < self.settings.semantic_threshold:
                return None
            if n.answer.tenant != request.tenant or n.answer.model != request.model or \
                    n.answer.model_version != request.model_version:
                ERRORS.labels("scope").inc()
                log.error("semantic cache row outside the request's scope ignored", extra={"key": n.exact_key})
                continue
            if self.settings.semantic_same_key_terms and not same_key_terms(asked, n.question):
                continue
            return n
        return None

    def _hit(self, lookup: Lookup, *, level: str) -> Lookup:
        kind = lookup.kind
        LOOKUPS.labels(kind, "hit").inc()
        RESPONSES.labels(kind).inc()
        LOOKUP_SECONDS.labels(f"{kind}_{level}" if kind == EXACT else kind).observe(
            time.perf_counter() - lookup.started)
        return lookup

    def _miss(self, lookup: Lookup) -> Lookup:
        lookup.kind = MISS
        if self.store is None:
            LOOKUPS.labels(EXACT, "miss").inc()
        RESPONSES.labels(MISS).inc()
        LOOKUP_SECONDS.labels(MISS).observe(time.perf_counter() - lookup.started)
        return lookup

    # -- answers ----------------------------------------------------------------------------------------

    def replay(self, lookup: Lookup, served: Any) -> CachedGeneration:
        assert lookup.answer is not None
        return CachedGeneration(served, lookup.answer, lookup.kind, lookup.started)

    def record(self, lookup: Lookup, generation: Any) -> RecordingGeneration:
        """`generation` (just submitted for a request that missed) as a generation whose answer is stored once
        it finished; a bypassed request, or one served by another version than the key's, is not stored."""
        same = getattr(generation.model, "version", None) == lookup.request.model_version
        store = lookup.kind == MISS and same
        return RecordingGeneration(generation, (lambda *a: self.remember(lookup, *a)) if store else None)

    def bypass(self, generation: Any) -> RecordingGeneration:
        """`generation` answered without the cache (evaluation traffic: a pinned version): neither looked up nor
        stored; counted as bypass."""
        RESPONSES.labels(BYPASS).inc()
        return RecordingGeneration(generation, None)

    async def submit(self, llm: Any, name: str, *, params: SamplingParams,
                     messages: list[dict[str, str]] | None = None, prompt: str | None = None, tenant: str = "",
                     **fingerprint: Any) -> CachedGeneration | RecordingGeneration:
        """What the doors call instead of `llm.submit`: a replayed hit, or the generation (stored when it ends).
        NotFound / Unavailable for the model come before any lookup; the engine's refusals (limits, queue
        full) come from `llm.submit` on a miss."""
        served = llm.model(name)
        request = CacheRequest.of(served, params, messages=messages, prompt=prompt, tenant=tenant, **fingerprint)
        lookup = await self.lookup(request)
        if lookup.hit:
            return self.replay(lookup, served)
        return self.record(lookup, llm.submit(name, messages=messages, prompt=prompt, params=params))

    def remember(self, lookup: Lookup, text: str, token_ids: list[int], finish_reason: str, usage: Any,
                 extra: Mapping[str, Any] | None = None) -> None:
        """Store a finished generation: in memory now, in the database in the background."""
        request = lookup.request
        answer = CachedAnswer(text=text, token_ids=tuple(token_ids), finish_reason=finish_reason,
                              prompt_tokens=usage.prompt_tokens if usage else 0,
                              completion_tokens=usage.completion_tokens if usage else len(token_ids),
                              model=request.model, model_version=request.model_version, tenant=request.tenant,
                              dependencies=request.dependencies(), expires_at=time.time() + self.settings.ttl_s,
                              extra=dict(extra or {}))
        evicted = self.memory.evicted
        self.memory.put(lookup.key, answer)
        EVICTED.labels("lru").inc(self.memory.evicted - evicted)
        MEMORY_ENTRIES.set(len(self.memory))
        MEMORY_BYTES.set(self.memory.bytes)
        STORED.inc()
        if self.store is None:
            return
        if len(self._writes) >= self.settings.max_pending_writes:
            ERRORS.labels("write_backlog").inc()
            return
        task = asyncio.get_running_loop().create_task(self._write(lookup, answer))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, lookup: Lookup, answer: CachedAnswer) -> None:
        assert self.store is not None
        try:
            await self.store.put(lookup.key, lookup.context if lookup.vector is not None else None,
                                 lookup.question, lookup.vector, answer)
        except Exception as exc:
            ERRORS.labels("write").inc()
            log.warning("response cache write failed", extra={"error": repr(exc)})

    # -- invalidation -----------------------------------------------------------------------------------

    async def invalidate(self, name: str, version: int) -> int:
        """`name` (a model, adapter or prompt template) now serves `version`: entries made with another version
        of it are dropped from memory and the database (they could not match any more: the keys hold the
        versions; this only frees their room). Returns how many went."""
        if not self.settings.enabled:
            return 0
        dropped = self.memory.evict_model(name, version)
        MEMORY_ENTRIES.set(len(self.memory))
        MEMORY_BYTES.set(self.memory.bytes)
        if self.store is not None:
            await self.flush()  # a write scheduled before the promotion must not land after the delete
            try:
                dropped += await self.store.evict(name, version)
            except Exception as exc:
                ERRORS.labels("evict").inc()
                log.warning("response cache eviction failed (stale rows expire with their TTL)",
                            extra={"model": name, "error": repr(exc)})
        EVICTED.labels("promotion").inc(dropped)
        if dropped:
            log.info("response cache entries evicted after a promotion",
                     extra={"model": name, "version": version, "entries": dropped})
        return dropped

    def _notice_versions(self, request: CacheRequest) -> None:
        """The first request served by another version of a model (this replica swaps when the new version has
        loaded, after the models.promoted event) evicts the entries of the version it replaced, including any a
        generation on the old version stored after the event. Models only: a replica serves one version of a
        name at a time, whereas two applications may pin two versions of one prompt template."""
        name, version = request.model, request.model_version
        seen = self._seen.get(name)
        if seen == version:
            return
        self._seen[name] = version
        if seen is not None:
            task = asyncio.get_running_loop().create_task(self.invalidate(name, version))
            self._evictions.add(task)
            task.add_done_callback(self._evictions.discard)

    async def _purge_loop(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                EVICTED.labels("purge").inc(await self.store.purge(self.settings.max_rows))
            except Exception as exc:
                ERRORS.labels("purge").inc()
                log.warning("response cache purge failed", extra={"error": repr(exc)})


def tenant_of(headers: Mapping[str, str] | Callable[[str], str | None]) -> str:
    """The tenant a request names in `x-flywheel-tenant` (HTTP header or gRPC metadata); empty = default."""
    value = headers(TENANT_HEADER) if callable(headers) else headers.get(TENANT_HEADER)
    return (value or "").strip()
