"""The fine-tune benchmark's peer: a plain PEFT training script, as a user would write it without Flywheel.

`python -m bench.finetune_peer SPEC.json` reads the base directory, the examples and the settings, trains a
LoRA adapter with PEFT in a simple loop (chat template, loss on the answer tokens, AdamW, the same seeds,
batch size and epochs as the fine-tuner), saves it, and prints one JSON line: seconds from the start of
`main` (after the imports) to the adapter saved, peak RSS, and the answer-token loss of the eval examples
before and after. No database, registry, checkpoints or progress reports: what the service adds on top.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def encode(tokenizer: Any, system: str, question: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    answer_ids = [*tokenizer.encode(answer, add_special_tokens=False), tokenizer.eos_token_id]
    ids = (list(prompt) + answer_ids)[-max_length:]
    labels = ([-100] * len(prompt) + answer_ids)[-max_length:]
    return ids, labels


def batches(items: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(i) for i, _ in items)
    ids = torch.full((len(items), width), pad)
    labels = torch.full((len(items), width), -100)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (i, lab) in enumerate(items):
        ids[row, :len(i)], labels[row, :len(lab)], mask[row, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    return ids, labels, mask


def mean_loss(model: Any, items: list[tuple[list[int], list[int]]], pad: int) -> float:
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), 4):
            ids, labels, mask = batches(items[start:start + 4], pad)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    model.train()
    return total / max(count, 1)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    started = time.perf_counter()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = [encode(tokenizer, spec["system"], q, a, spec["max_length"]) for q, a in spec["train"]]
    evaluation = [encode(tokenizer, spec["system"], q, a, spec["max_length"]) for q, a in spec["eval"]]
    before = mean_loss(model, evaluation, pad)
    model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                                             target_modules=spec["target_modules"], task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["learning_rate"])
    model.train()
    steps = 0
    for epoch in range(spec["epochs"]):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec["seed"] + epoch)).tolist()
        for start in range(0, len(order), spec["batch_size"]):
            ids, labels, mask = batches([train[i] for i in order[start:start + spec["batch_size"]]], pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
    after = mean_loss(model, evaluation, pad)
    model.save_pretrained(spec["out"])
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "steps": steps, "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "eval_loss_base": before, "eval_loss": after,
        "perplexity_before": math.exp(min(before, 80)), "perplexity_after": math.exp(min(after, 80))}))


if __name__ == "__main__":
    main()
