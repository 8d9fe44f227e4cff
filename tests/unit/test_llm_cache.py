"""The response cache's fingerprint (what goes into the exact and context keys), its in-process LRU, and the
cache in memory-only mode in front of a stand-in LLM service."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from flywheel.inference.cache.entries import CachedAnswer, MemoryCache
from flywheel.inference.cache.fingerprint import CacheRequest, cacheable
from flywheel.inference.cache.service import (
    CacheSettings,
    ResponseCache,
    key_terms,
    numbers,
    same_key_terms,
    tenant_of,
)
from flywheel.inference.llm.sampling import SamplingParams, TokenSampler

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)
SYSTEM = ("system", "You answer from the bank's documents.")
QUESTION = ("user", "How do I freeze my card?")


def request(**changes: Any) -> CacheRequest:
    base = CacheRequest(model="assistant", model_version=3, params=GREEDY, messages=(SYSTEM, QUESTION),
                        tenant="northwind")
    return dataclasses.replace(base, **changes)


# Each changes something the answer depends on, outside the last user turn.
CONTEXT_CHANGES: dict[str, dict[str, Any]] = {
    "system prompt": {"messages": (("system", "You are a pirate."), QUESTION)},
    "no system prompt": {"messages": (QUESTION,)},
    "an earlier turn": {"messages": (SYSTEM, ("user", "Hi"), ("assistant", "Hello!"), QUESTION)},
    "tenant": {"tenant": "contoso"},
    "model name": {"model": "assistant-lora"},
    "model version": {"model_version": 4},
    "adapter base version": {"base_model": "smollm2", "base_version": 2},
    "application": {"application": "support"},
    "prompt template": {"prompt_name": "support-prompt", "prompt_version": 1},
    "prompt version": {"prompt_name": "support-prompt", "prompt_version": 2},
    "retrieval": {"retrieval": {"collection": "policies", "index_version": 7, "k": 4}},
    "tools": {"tools": [{"type": "function", "function": {"name": "balance"}}]},
    "other dependency": {"depends_on": {"policies-index": 9}},
    "temperature": {"params": SamplingParams(temperature=0.7, seed=1, max_tokens=32)},
    "max_tokens": {"params": SamplingParams(temperature=0.0, max_tokens=33)},
    "max_tokens unset": {"params": SamplingParams(temperature=0.0)},
    "stop": {"params": SamplingParams(temperature=0.0, max_tokens=32, stop=("\n",))},
}


@pytest.mark.parametrize("what", list(CONTEXT_CHANGES))
def test_everything_that_changes_an_answer_changes_both_keys(what: str) -> None:
    plain, changed = request(), request(**CONTEXT_CHANGES[what])
    assert changed.exact_key() != plain.exact_key()
    assert changed.context_key() != plain.context_key()


def test_prompt_versions_differ_from_each_other() -> None:
    one, two = (request(prompt_name="p", prompt_version=v) for v in (1, 2))
    assert one.exact_key() != two.exact_key() and one.context_key() != two.context_key()


def test_sampled_requests_differ_by_seed_and_top_p() -> None:
    sampled = request(params=SamplingParams(temperature=0.7, top_p=0.9, seed=1))
    for other in (SamplingParams(temperature=0.7, top_p=0.9, seed=2),
                  SamplingParams(temperature=0.7, top_p=0.8, seed=1),
                  SamplingParams(temperature=0.8, top_p=0.9, seed=1)):
        assert request(params=other).exact_key() != sampled.exact_key()
        assert request(params=other).context_key() != sampled.context_key()


def test_greedy_requests_ignore_top_p_and_seed_as_the_engine_does() -> None:
    plain = request()
    same = request(params=SamplingParams(temperature=0.0, top_p=0.5, seed=42, max_tokens=32))
    assert same.exact_key() == plain.exact_key() and same.context_key() == plain.context_key()
    assert TokenSampler(same.params).generator is None  # greedy: the engine draws nothing, top_p/seed unused


def test_the_last_user_turn_is_in_the_exact_key_only() -> None:
    plain, paraphrase = request(), request(messages=(SYSTEM, ("user", "How can I freeze my card?")))
    assert paraphrase.exact_key() != plain.exact_key()
    assert paraphrase.context_key() == plain.context_key()
    assert paraphrase.last_user_turn() == "How can I freeze my card?"
    # The role sequence is part of the context; the text of the last user turn is not.
    assert plain.context_key() != plain.exact_key()


def test_keys_are_stable_and_insensitive_to_mapping_order() -> None:
    a = request(retrieval={"k": 4, "collection": "policies"}, depends_on={"x": 1, "y": 2})
    b = request(retrieval={"collection": "policies", "k": 4}, depends_on={"y": 2, "x": 1})
    assert a.exact_key() == b.exact_key() and a.context_key() == b.context_key()
    assert len(a.exact_key()) == 64 and a.exact_key() == a.exact_key()


def test_no_semantic_scope_without_a_last_user_turn() -> None:
    raw = request(messages=(), prompt="The bank")
    assert raw.last_user_turn() is None and raw.context_key() is None
    assert raw.exact_key() != request(messages=(), prompt="The bank.").exact_key()
    ends_with_assistant = request(messages=(SYSTEM, QUESTION, ("assistant", "Sure")))
    assert ends_with_assistant.context_key() is None and ends_with_assistant.exact_key() != request().exact_key()


def test_only_deterministic_requests_are_cacheable() -> None:
    assert cacheable(SamplingParams(temperature=0.0))
    assert cacheable(SamplingParams(temperature=0.9, seed=3))
    assert not cacheable(SamplingParams(temperature=0.9))
    assert not cacheable(SamplingParams())  # OpenAI's default temperature is 1


def test_dependencies_name_the_versions_a_promotion_evicts() -> None:
    assert request().dependencies() == {"assistant": 3}
    assert request(prompt_name="support-prompt", prompt_version=2, depends_on={"idx": 5}).dependencies() == \
        {"assistant": 3, "support-prompt": 2, "idx": 5}


def test_tools_must_be_json() -> None:
    with pytest.raises(TypeError, match="JSON"):
        request(tools=object()).exact_key()


def test_key_terms_are_numbers_and_names() -> None:
    assert numbers("Is a $1,000 limit ok for 16 year olds?") == {"1000", "16"}
    assert key_terms("Is a $1,000 limit ok for 16 year olds?") == {"1000", "16"}
    assert key_terms("How do I freeze my card? I'm abroad.") == frozenset()  # sentence starts and I are not names
    assert key_terms("What is the daily limit of a Plus Debit card?") == {"plus", "debit"}
    assert key_terms("How much cash can I take out per day with a Plus Debit card?") == \
        key_terms("What's the daily cash limit of my Plus Debit card?")
    assert key_terms("...with an Everyday Debit card?") != key_terms("...with a Plus Debit card?")
    assert key_terms("What does reason code D80 mean?") == {"d80", "80"} != key_terms("What does reason code D40 mean?")
    assert key_terms("My card's chip broke. What's Northwind's number?") == {"northwind"}


def test_same_key_terms_ignores_case_but_not_names_or_numbers() -> None:
    original = "How much cash can I take out per day with a Plus Debit card?"
    assert same_key_terms("What is the daily cash limit of a Plus Debit card?", original)
    assert same_key_terms("how much cash can i take out per day with a plus debit card", original)
    assert not same_key_terms("How much cash can I take out per day with an Everyday Debit card?", original)
    assert not same_key_terms("how much cash per day with my debit card", original)  # the product is gone
    assert not same_key_terms("Can my son get a card? He's 15.", "Can my son get a card? He's 16.")
    assert same_key_terms("What is the FX-2 charge?", "what does the fx-2 fee mean")


def test_tenant_header() -> None:
    assert tenant_of({"x-flywheel-tenant": " northwind "}) == "northwind" and tenant_of({}) == ""


def answer(text: str = "Freeze it in the app.", **changes: Any) -> CachedAnswer:
    values: dict[str, Any] = {"text": text, "token_ids": (1, 2, 3), "finish_reason": "stop", "prompt_tokens": 10,
                              "completion_tokens": 3, "model": "assistant", "model_version": 3, "tenant": "",
                              "dependencies": {"assistant": 3}, "expires_at": time.time() + 60}
    values.update(changes)
    return CachedAnswer(**values)


def test_memory_cache_is_lru_bounded_by_entries_and_bytes() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=10_000)
    cache.put("a", answer())
    cache.put("b", answer())
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", answer())
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2 and cache.evicted == 1
    small = MemoryCache(max_entries=100, max_bytes=3 * answer().size_bytes())
    for i in range(5):
        small.put(str(i), answer())
    assert len(small) == 3 and small.bytes <= small.max_bytes
    small.put("huge", answer("x" * 100_000))  # larger than the whole cache: not kept
    assert small.get("huge") is None and len(small) == 3


def test_memory_cache_expiry_and_eviction_by_version() -> None:
    cache = MemoryCache(max_entries=10, max_bytes=1 << 20)
    cache.put("old", answer(expires_at=time.time() - 1))
    assert cache.get("old") is None and len(cache) == 0
    cache.put("v3", answer())
    cache.put("v4", answer(model_version=4, dependencies={"assistant": 4}))
    cache.put("prompt1", answer(dependencies={"assistant": 4, "support-prompt": 1}))
    assert cache.evict_model("assistant", 4) == 1 and cache.get("v3") is None and cache.get("v4") is not None
    assert cache.evict_model("support-prompt", 2) == 1 and cache.get("prompt1") is None
    assert cache.evict_model("assistant", 0) == 1 and len(cache) == 0  # no champion any more: all go


# -- the cache in front of a stand-in LLM service (memory only) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Served:
    name: str = "assistant"
    version: int = 3
    kind: str = "llm"
    base_name: str = "assistant"
    base_version: int = 3


class FakeLLM:
    """Generates 'answer <n>' (n counts the generations), in two chunks."""

    def __init__(self) -> None:
        self.served = Served()
        self.generations = 0

    def model(self, name: str) -> Served:
        return self.served

    def submit(self, name: str, **kwargs: Any) -> Any:
        from flywheel.inference.llm.engine import GenerationChunk, Usage

        self.generations += 1
        n, served = self.generations, self.served

        class Generation:
            model, prompt_tokens, max_tokens = served, 5, 10

            def __aiter__(self) -> Any:
                async def chunks() -> Any:
                    yield GenerationChunk("answer ", [7])
                    yield GenerationChunk(str(n), [8], "stop", Usage(5, 2), 0.01)
                return chunks()

            def cancel(self) -> None:
                pass
        return Generation()


async def test_memory_only_cache_hits_exactly_and_bypasses_sampling() -> None:
    llm, cache = FakeLLM(), ResponseCache(CacheSettings())
    messages = [{"role": "user", "content": "hi"}]
    first = await cache.submit(llm, "assistant", messages=messages, params=GREEDY)
    assert first.cache == "miss" and (await first.collect()).text == "answer 1"
    again = await cache.submit(llm, "assistant", messages=messages, params=GREEDY)
    completion = await again.collect()
    assert again.cache == "exact" and completion.cache == "exact" and completion.text == "answer 1"
    assert completion.usage.prompt_tokens == 5 and completion.usage.cached_prompt_tokens == 5
    assert llm.generations == 1
    # Another tenant: generated again.
    other = await cache.submit(llm, "assistant", messages=messages, params=GREEDY, tenant="contoso")
    assert other.cache == "miss" and (await other.collect()).text == "answer 2"
    # Sampled without a seed: never cached (generated each time, never stored).
    for n in (3, 4):
        sampled = await cache.submit(llm, "assistant", messages=messages, params=SamplingParams(temperature=0.8))
        assert sampled.cache == "miss" and (await sampled.collect()).text == f"answer {n}"
    # A streamed miss is stored when its last chunk went by; a cancelled one is not.
    streamed = await cache.submit(llm, "assistant", messages=[{"role": "user", "content": "yo"}], params=GREEDY)
    assert [c.text async for c in streamed] == ["answer ", "5"]
    cut = await cache.submit(llm, "assistant", messages=[{"role": "user", "content": "hey"}], params=GREEDY)
    async with cut:
        async for _ in cut:
            break
    replay = await cache.submit(llm, "assistant", messages=[{"role": "user", "content": "yo"}], params=GREEDY)
    assert replay.cache == "exact" and [c.text async for c in replay] == ["answer 5"]
    assert (await cache.submit(llm, "assistant", messages=[{"role": "user", "content": "hey"}],
                               params=GREEDY)).cache == "miss"
    # A new version served: the old entries stop matching (and are evicted on first sight of it).
    llm.served = Served(version=4)
    fresh = await cache.submit(llm, "assistant", messages=messages, params=GREEDY)
    assert fresh.cache == "miss"
    await cache.settle()
    assert all(a.model_version == 4 for a, _ in cache.memory._entries.values())


async def test_a_disabled_cache_bypasses_everything() -> None:
    llm, cache = FakeLLM(), ResponseCache.disabled()
    for n in (1, 2):
        generation = await cache.submit(llm, "assistant", messages=[{"role": "user", "content": "hi"}], params=GREEDY)
        assert generation.cache == "miss" and (await generation.collect()).text == f"answer {n}"
    assert len(cache.memory) == 0
