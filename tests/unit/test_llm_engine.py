"""The generation engine on a tiny random Llama (built from a config, nothing downloads): continuous
batching shares decode steps, requests join mid-flight and leave, greedy outputs equal Hugging Face
`generate`, cancellation frees the row, limits and overload are domain errors, prefix reuse, LoRA
adapters side by side in one batch and hot-loaded under load, int8 and perplexity."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.common.model_building import model_building
from flywheel.inference.llm.engine import GenerationEngine, Overloaded
from flywheel.inference.llm.loading import load_model_dir, render_chat
from flywheel.inference.llm.perplexity import perplexity
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.testing import build_tiny_adapter, build_tiny_llm
from tests import polling

QUESTIONS = ["hello world", "A chargeback is filed when", "Café crème", "The bank refunds card payments that were",
             "Customers can freeze their card", "Interest on savings"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-llm")
    base = build_tiny_llm(root / "base", seed=0)
    return {"base": base, "a": build_tiny_adapter(base, root / "lora-a", seed=1),
            "b": build_tiny_adapter(base, root / "lora-b", seed=2)}


@pytest.fixture(scope="module")
def loaded(tiny: dict[str, Path]) -> tuple[Any, Any]:
    return load_model_dir(tiny["base"])


async def until(predicate: Any, what: str) -> Any:
    async def check() -> Any:
        return predicate()
    return await polling.eventually(check, what=what)


def prompts(tokenizer: Any) -> list[list[int]]:
    return [render_chat(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def hf_greedy(model: Any, ids: list[int], max_new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False)
    return out[0, len(ids):].tolist()


async def started(model: Any, tokenizer: Any, **kwargs: Any) -> GenerationEngine:
    engine = GenerationEngine(model, tokenizer, name="tiny", **kwargs)
    engine.start()
    return engine


@pytest.fixture
async def engine(loaded: tuple[Any, Any]):  # type: ignore[no-untyped-def]
    e = await started(*loaded)
    yield e
    await e.aclose()


async def test_concurrent_greedy_requests_share_steps_and_equal_hf_generate(engine, loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    ps = prompts(tokenizer)
    expected = [hf_greedy(model, p, 24) for p in ps]
    alone = [(await engine.submit(p, GREEDY).collect()).token_ids for p in ps[:2]]
    assert alone == expected[:2]
    before = engine.stats.steps, engine.stats.decode_tokens
    results = await asyncio.gather(*(engine.submit(p, GREEDY).collect() for p in ps))
    assert [r.token_ids for r in results] == expected
    steps, tokens = engine.stats.steps - before[0], engine.stats.decode_tokens - before[1]
    assert steps < tokens  # decode steps were shared
    assert engine.stats.max_batch == len(ps)
    for r, p in zip(results, ps, strict=True):
        assert r.usage.prompt_tokens == len(p) and r.usage.completion_tokens == len(r.token_ids)
        assert r.finish_reason in ("stop", "length") and r.time_to_first_token_s > 0
        assert r.text == tokenizer.decode(r.token_ids, skip_special_tokens=True).replace("\x00", "")  # NUL dropped


async def test_a_request_joins_mid_flight_and_both_get_their_own_answer(engine, loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    long_prompt, late_prompt = prompts(tokenizer)[:2]
    eos_free = SamplingParams(temperature=0.0, max_tokens=60)
    first = engine.submit(long_prompt, eos_free)
    got: list[int] = []
    async for chunk in first:
        got += chunk.token_ids
        if len(got) == 5:
            break
    late = await engine.submit(late_prompt, GREEDY).collect()
    async for chunk in first:
        got += chunk.token_ids
    assert engine.stats.max_batch == 2
    assert late.token_ids == hf_greedy(model, late_prompt, 24)
    assert got == hf_greedy(model, long_prompt, 60)


async def test_cancelling_frees_the_row(engine, loaded) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = loaded
    stream = engine.submit(prompts(tokenizer)[0], SamplingParams(temperature=1.0, seed=1, max_tokens=200))
    other = engine.submit(prompts(tokenizer)[1], SamplingParams(temperature=1.0, seed=2, max_tokens=200))
    async for _ in stream:
        break
    stream.cancel()
    await until(lambda: engine.stats.cancelled == 1 and engine.stats.running <= 1,
                             what="the cancelled sequence left the batch")
    rest = await other.collect()  # the other one is unaffected
    assert rest.usage.completion_tokens >= 1
    await until(lambda: engine.stats.running == 0, what="an empty batch")


async def test_seeded_sampling_is_the_same_alone_and_batched(engine, loaded) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = loaded
    ps = prompts(tokenizer)
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_tokens=30)
    alone = await engine.submit(ps[0], params).collect()
    together = await asyncio.gather(engine.submit(ps[0], params).collect(),
                                    *(engine.submit(p, SamplingParams(temperature=1.0, max_tokens=40)).collect()
                                      for p in ps[1:]))
    assert together[0].token_ids == alone.token_ids


async def test_stop_strings_end_the_answer_before_them(engine, loaded) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = loaded
    p = prompts(tokenizer)[3]
    full = await engine.submit(p, SamplingParams(temperature=0.0, max_tokens=40)).collect()
    text = full.text
    assert len(text) > 12
    stop = text[8:12]
    cut = await engine.submit(p, SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,))).collect()
    assert cut.finish_reason == "stop"
    assert cut.text == text[:text.index(stop)]
    assert stop not in cut.text


async def test_limits_and_overload_are_domain_errors(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    engine = GenerationEngine(model, tokenizer, name="tiny", max_queue=1, max_tokens_cap=100)  # worker not started
    with pytest.raises(InvalidArgument, match=r"the prompt has 300 tokens.*context of 256"):
        engine.submit([5] * 300, GREEDY)
    with pytest.raises(InvalidArgument, match=r"300 were asked for \(200 in the prompt \+ 100 max_tokens\)"):
        engine.submit([5] * 200, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidArgument, match="above this server's cap of 100"):
        engine.submit([5] * 10, SamplingParams(max_tokens=101))
    with pytest.raises(InvalidArgument, match="empty"):
        engine.submit([], GREEDY)
    with pytest.raises(NotFound, match="adapter"):
        engine.submit([5], GREEDY, adapter="nope")
    queued = engine.submit([5] * 10, GREEDY)
    assert queued.max_tokens == 24
    assert engine.submit.__self__ is engine
    with pytest.raises(Overloaded, match="overloaded: 1 requests are waiting"):
        engine.submit([5] * 10, GREEDY)
    default = GenerationEngine(model, tokenizer, max_tokens_cap=1000)
    assert default.check(200, SamplingParams()) == 56  # what fits in the context


async def test_a_shared_system_prompt_is_prefilled_once(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    engine = await started(model, tokenizer, min_prefix_tokens=8)
    try:
        system = "You are the support assistant of the bank. Answer from the policy documents only."
        chats = [render_chat(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": q}])
                 for q in QUESTIONS[:3]]
        first = await engine.submit(chats[0], GREEDY).collect()
        assert first.usage.cached_prompt_tokens == 0
        later = [await engine.submit(c, GREEDY).collect() for c in chats[1:]]
        assert all(r.usage.cached_prompt_tokens >= 20 for r in later)
        assert engine.stats.prefix_reused_tokens >= 40
        assert [r.token_ids for r in later] == [hf_greedy(model, c, 24) for c in chats[1:]]
    finally:
        await engine.aclose()


async def test_two_adapters_and_the_base_share_a_batch_and_answer_as_alone(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = load_model_dir(tiny["base"])
    engine = await started(model, tokenizer)
    try:
        await engine.load_adapter("a", str(tiny["a"]))
        await engine.load_adapter("b", str(tiny["b"]))
        ps = prompts(tokenizer)[:3]
        jobs = [(p, adapter) for p in ps for adapter in (None, "a", "b")]
        alone = [(await engine.submit(p, GREEDY, adapter=ad).collect()).token_ids for p, ad in jobs]
        before = engine.stats.steps
        together = await asyncio.gather(*(engine.submit(p, GREEDY, adapter=ad).collect() for p, ad in jobs))
        assert [r.token_ids for r in together] == alone
        assert engine.stats.max_batch == len(jobs) if len(jobs) <= engine.max_batch else engine.max_batch
        assert engine.stats.steps - before < sum(len(t) for t in alone)
        for i in range(0, len(alone), 3):  # each adapter changes the answer
            assert alone[i] != alone[i + 1] and alone[i] != alone[i + 2] and alone[i + 1] != alone[i + 2]
    finally:
        await engine.aclose()
    # The adapter's answer alone is PEFT's own.
    from peft import PeftModel

    with model_building():
        reference = PeftModel.from_pretrained(load_model_dir(tiny["base"])[0], str(tiny["a"]))
    assert alone[1] == hf_greedy(reference, ps[0], 24)


async def test_hot_loading_an_adapter_under_load_drops_nothing(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = load_model_dir(tiny["base"])
    engine = await started(model, tokenizer)
    try:
        ps = prompts(tokenizer)
        expected = {i: hf_greedy(model, p, 24) for i, p in enumerate(ps)}
        results: list[tuple[int, list[int]]] = []
        stop = asyncio.Event()

        async def load(i: int) -> None:
            while not stop.is_set():
                r = await engine.submit(ps[i], GREEDY).collect()
                results.append((i, r.token_ids))

        workers = [asyncio.create_task(load(i)) for i in range(len(ps))]
        await until(lambda: len(results) >= 3, what="traffic before the load")
        await engine.load_adapter("a", str(tiny["a"]))
        with_adapter = await engine.submit(ps[0], GREEDY, adapter="a").collect()
        await engine.unload_adapter("a")
        await until(lambda: "a" not in engine.adapters, what="the adapter deleted")
        count = len(results)
        await until(lambda: len(results) >= count + 3, what="traffic after the unload")
        stop.set()
        await asyncio.gather(*workers)
        assert all(tokens == expected[i] for i, tokens in results)  # base answers unchanged throughout
        assert with_adapter.token_ids != expected[0]
        assert engine.stats.failed == 0
        with pytest.raises(NotFound):
            engine.submit(ps[0], GREEDY, adapter="a")
    finally:
        await engine.aclose()


@pytest.mark.parametrize("mode", ["int8", "int8-all"])
async def test_int8_model_generates_and_perplexity_is_computed(tiny, mode: str) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = load_model_dir(tiny["base"], quantize=mode)
    assert "DynamicQuantizedLinear" in repr(model)
    kept_float = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert kept_float == ([] if mode == "int8-all" else ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
                                                         "lm_head"])
    engine = await started(model, tokenizer)
    try:
        result = await engine.submit(prompts(tokenizer)[0], GREEDY).collect()
        assert result.usage.completion_tokens >= 1
    finally:
        await engine.aclose()
    ppl_int8 = perplexity(model, tokenizer, max_tokens=600)
    ppl_fp32 = perplexity(load_model_dir(tiny["base"])[0], tokenizer, max_tokens=600)
    assert math.isfinite(ppl_int8) and math.isfinite(ppl_fp32) and ppl_fp32 > 1


def test_perplexity_windows_score_each_token_once(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    text = "The bank refunds card payments that were not authorised by the customer. " * 3
    whole = perplexity(model, tokenizer, text, window=256, stride=200)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < 256
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert whole == pytest.approx(math.exp(float(nll)), rel=1e-4)
    windowed = perplexity(model, tokenizer, text, window=32, stride=16)
    assert math.isfinite(windowed) and windowed > 1
