"""Perplexity of a causal LM over a text (the quality cost of int8 next to its speed).

The text is tokenized once and scored in windows of `window` tokens that overlap by `window - stride`;
each token is scored once, with at least `window - stride` tokens of context where the text allows
(the usual sliding-window evaluation). `eval_text.txt` beside this file is the shipped text: a few KB of
plain English about card payments and banking, written for this project.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

EVAL_TEXT = Path(__file__).with_name("eval_text.txt")


def eval_text() -> str:
    return EVAL_TEXT.read_text(encoding="utf-8")


def perplexity(model: Any, tokenizer: Any, text: str | None = None, *, window: int = 256, stride: int = 128,
               max_tokens: int | None = None) -> float:
    """exp(mean negative log-likelihood per token) of `text` (default: the shipped eval text)."""
    ids = tokenizer.encode(text if text is not None else eval_text(), add_special_tokens=False)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    context = int(getattr(model.config, "max_position_embeddings", window))
    window = min(window, context)
    stride = max(1, min(stride, window - 1))  # windows overlap: every scored token has context
    if len(ids) < 2:
        raise ValueError("the text has fewer than 2 tokens")
    nll, counted, scored_to = 0.0, 0, 1  # token 0 has no context: never scored
    with torch.inference_mode():
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            logits = model(input_ids=torch.tensor([ids[begin:end]], dtype=torch.long)).logits[0].float()
            # Token j (begin < j < end) is predicted by logits[j - begin - 1]; score the ones not scored yet.
            log_probs = torch.log_softmax(logits[scored_to - begin - 1:end - begin - 1], dim=-1)
            targets = torch.tensor(ids[scored_to:end], dtype=torch.long)
            nll -= float(log_probs.gather(1, targets.unsqueeze(1)).sum())
            counted += end - scored_to
            scored_to = end
            if end == len(ids):
                break
    return math.exp(nll / counted)
