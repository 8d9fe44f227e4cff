"""LoRA training of a causal LM on (conversation, answer) examples, free of any transport or database.

- Encoding: the conversation in the base model's own chat template up to the assistant's turn, then the
  answer and the end-of-turn token; the loss is on the answer tokens only (the prompt's labels are
  -100). Too long: the prompt loses its oldest tokens first, the answer is cut only when it alone does
  not fit.
- Training: PEFT LoRA on `target_modules`, AdamW at a constant learning rate, gradient norm clipped at
  1, batches in a seeded order per epoch (so a resumed run sees the same batches as an uninterrupted one).
- Checkpoints every `checkpoint_every` steps and at each epoch end, under `<checkpoints>/step-<N>/`:
  the adapter weights, the optimizer state, the RNG state and the loss sums so far, written into a
  temporary sibling and renamed into place (a crash leaves the previous checkpoint whole). `train_lora`
  resumes from the newest one that belongs to the same run (its fingerprint matches).
- Metrics: the mean answer-token loss on the eval split before (the base: the adapter disabled) and
  after training, the perplexities (exp of those), and the train loss of each epoch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flywheel.common.errors import FailedPrecondition, InvalidArgument
from flywheel.common.model_building import model_building
from flywheel.finetuner.hyperparams import (
    STATE_FILE,
    STEP_PREFIX,
    Example,
    LoraSettings,
    Progress,
    StepReport,
    TrainingResult,
    latest_checkpoint,
)

IGNORE = -100
TENSORS_FILE = "training_state.pt"
# Written next to the adapter: what it is and how it was made (read by people, not by inference).
INFO_FILE = "finetune.json"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


# -- encoding ----------------------------------------------------------------------------------------------

def _ids(value: Any) -> list[int]:
    if isinstance(value, Mapping) or hasattr(value, "keys"):
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(i) for i in value]


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Token ids and labels of one example (labels -100 on the prompt: the loss is on the answer only)."""
    eos = tokenizer.eos_token_id
    if example.messages:
        if not getattr(tokenizer, "chat_template", None):
            raise FailedPrecondition("the base model has no chat template; conversations cannot be rendered")
        chat = [{"role": r, "content": c} for r, c in example.messages]
        prompt = _ids(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
        full = _ids(tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": example.target}],
                                                  tokenize=True, return_dict=False))
        if full[:len(prompt)] == prompt and len(full) > len(prompt):
            answer = full[len(prompt):]
            if eos is not None and eos in answer:  # what follows the end of the turn is not the answer
                answer = answer[:answer.index(eos) + 1]
        else:  # a template that renders the last turn differently: the answer's own tokens
            answer = _ids(tokenizer.encode(example.target, add_special_tokens=False)) + ([eos] if eos is not None
                                                                                         else [])
    else:
        prompt = _ids(tokenizer.encode(example.prompt, add_special_tokens=False))
        answer = _ids(tokenizer.encode(example.target, add_special_tokens=False)) + ([eos] if eos is not None else [])
    truncated = len(prompt) + len(answer) > max_length
    if len(answer) >= max_length:
        answer = answer[:max_length - 1]
    keep = max_length - len(answer)
    if len(prompt) > keep:
        prompt = prompt[len(prompt) - keep:]
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer, truncated)


def _batch(items: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def _loss_sum(model: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the answer tokens and their count (each position predicts the next token)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss, int((target != IGNORE).sum())


def eval_loss(model: Any, encoded: Sequence[Encoded], pad: int, batch_size: int) -> float | None:
    """Mean answer-token loss over `encoded` (None when there is nothing to evaluate)."""
    if not encoded:
        return None
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            loss, n = _loss_sum(model, *_batch(encoded[start:start + batch_size], pad))
            total += float(loss)
            tokens += n
    if was_training:
        model.train()
    return total / tokens if tokens else None


# -- checkpoints -------------------------------------------------------------------------------------------

Weights = dict[str, torch.Tensor]
# The trainable weights in a checkpoint (an adapter's, or a distilled student's layers).
WEIGHTS_FILE = "adapter_model.safetensors"


def _save_checkpoint(root: Path, weights: Weights, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{STEP_PREFIX}{state['step']:08d}"
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(scratch / WEIGHTS_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, scratch / TENSORS_FILE)
        (scratch / STATE_FILE).write_text(json.dumps(state, sort_keys=True))  # last: marks it complete
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    for old in root.iterdir():  # keep the newest only
        if old.name.startswith(STEP_PREFIX) and old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _load_checkpoint(path: Path, restore: Callable[[Weights], None], optimizer: torch.optim.Optimizer,
                     ) -> dict[str, Any]:
    from safetensors.torch import load_file

    restore(load_file(str(path / WEIGHTS_FILE)))
    saved = torch.load(path / TENSORS_FILE, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return json.loads((path / STATE_FILE).read_text())


# -- training ----------------------------------------------------------------------------------------------

def load_base(base_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face causal LM directory, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (base_dir / "config.json").is_file():
        raise FailedPrecondition(f"{base_dir} is not a Hugging Face model directory (no config.json)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        with model_building():
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


@dataclass
class Fitted:
    """What the training loop gives back: steps done, the step it resumed from, the per-epoch metrics, the eval
    loss before training (of the model as `baseline` measured it) and after."""

    steps: int
    resumed: int
    epochs: list[dict[str, float]]
    eval_loss_before: float | None
    eval_loss: float | None


@dataclass
class _Sums:
    loss: float = 0.0
    tokens: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)


def fit(model: Any, train_enc: Sequence[Encoded], eval_enc: Sequence[Encoded], pad: int, settings: LoraSettings, *,
        weights: Callable[[], Weights], restore: Callable[[Weights], None], baseline: Callable[[], float | None],
        checkpoints: Path, fingerprint: str, progress: Progress | None = None, stop_after_step: int = 0) -> Fitted:
    """The training loop of every run: AdamW at a constant rate on the parameters that require a gradient,
    gradient norm clipped at 1, batches in a seeded order per epoch, an eval pass per epoch, checkpoints
    (`weights()` are the trainable weights, `restore` puts them back) every `checkpoint_every` steps and at
    epoch ends, resuming from the newest checkpoint made for `fingerprint`. `baseline()` measures the eval
    loss before training (on a fresh start; a resumed run reads it from its checkpoint)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    steps_per_epoch = math.ceil(len(train_enc) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    sums = _Sums()
    step = resumed = 0
    before: float | None
    found = latest_checkpoint(checkpoints, fingerprint)
    if found is not None:
        state = _load_checkpoint(found, restore, optimizer)
        step = resumed = int(state["step"])
        sums = _Sums(state["loss_sum"], state["loss_tokens"], state["epochs"])
        before = state["eval_loss_base"]
    else:
        before = baseline()

    def checkpoint() -> None:
        _save_checkpoint(checkpoints, weights(), optimizer, {
            "fingerprint": fingerprint, "step": step, "loss_sum": sums.loss, "loss_tokens": sums.tokens,
            "epochs": sums.epochs, "eval_loss_base": before})

    model.train()
    for epoch in range(step // steps_per_epoch, settings.epochs):
        order = torch.randperm(len(train_enc), generator=torch.Generator().manual_seed(settings.seed * 7919 + epoch))
        batches = [order[i:i + settings.batch_size].tolist() for i in range(0, len(order), settings.batch_size)]
        for index in batches[step - epoch * steps_per_epoch:]:
            loss, tokens = _loss_sum(model, *_batch([train_enc[i] for i in index], pad))
            (loss / max(tokens, 1)).backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            sums.loss += float(loss.detach())
            sums.tokens += tokens
            report = StepReport(step, total, epoch + 1, settings.epochs, sums.loss / max(sums.tokens, 1))
            epoch_end = step % steps_per_epoch == 0
            if epoch_end:
                after = eval_loss(model, eval_enc, pad, settings.batch_size)
                report.epoch_metrics = {"epoch": epoch + 1, "train_loss": report.train_loss,
                                        "eval_loss": after if after is not None else 0.0}
                sums.epochs.append(report.epoch_metrics)
                sums.loss, sums.tokens = 0.0, 0
            if step < total and (epoch_end or (settings.checkpoint_every and step % settings.checkpoint_every == 0)):
                checkpoint()
                report.checkpoint_step = step
            if progress is not None:
                progress(report)
            if stop_after_step and step >= stop_after_step:
                raise Interrupted(step)
    return Fitted(step, resumed, sums.epochs, before, eval_loss(model, eval_enc, pad, settings.batch_size))


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise FailedPrecondition("the base model's tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad)


def train_lora(base_dir: Path, train: Sequence[Example], evaluation: Sequence[Example], settings: LoraSettings, *,
               checkpoints: Path, out_dir: Path, fingerprint: str, base_ref: str = "",
               progress: Progress | None = None, threads: int = 1, info: Mapping[str, Any] | None = None,
               stop_after_step: int = 0) -> TrainingResult:
    """Train a LoRA adapter of the model at `base_dir` on `train`, resuming from the newest checkpoint
    under `checkpoints` made for `fingerprint`; write it (PEFT directory) to `out_dir`.

    `progress` hears every step (raise from it to stop the run: the newest checkpoint stays).
    `stop_after_step` (tests) raises `Interrupted` right after that step (and its checkpoint, when one is due).
    """
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    if not train:
        raise FailedPrecondition("no training examples")
    started = time.monotonic()
    torch.set_num_threads(max(1, threads))
    model, tokenizer = load_base(base_dir)
    pad = pad_id(tokenizer)
    train_enc = [encode_example(tokenizer, e, settings.max_length) for e in train]
    eval_enc = [encode_example(tokenizer, e, settings.max_length) for e in evaluation]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    absent = [m for m in settings.target_modules if m not in present]
    if absent:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise InvalidArgument(f"target_modules {', '.join(absent)} not in the base model; its linear layers: "
                              f"{', '.join(linear)}")
    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    with model_building():
        model = get_peft_model(model, config)

    def baseline() -> float | None:
        with model.disable_adapter():
            return eval_loss(model, eval_enc, pad, settings.batch_size)

    fitted = fit(model, train_enc, eval_enc, pad, settings, weights=lambda: get_peft_model_state_dict(model),
                 restore=lambda w: set_peft_model_state_dict(model, w), baseline=baseline,
                 checkpoints=checkpoints, fingerprint=fingerprint, progress=progress,
                 stop_after_step=stop_after_step)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's model card template: nothing of ours in it
    if base_ref:  # the registry version it applies to, not this machine's path to it (inference passes the base)
        config_file = out_dir / "adapter_config.json"
        written = json.loads(config_file.read_text())
        written["base_model_name_or_path"] = base_ref
        config_file.write_text(json.dumps(written, indent=2, sort_keys=True))
    result = training_result(out_dir, fitted, train_enc, eval_enc, started)
    write_info(out_dir, {"format": "peft-lora", "base": base_ref}, settings, result, info)
    return result


def training_result(out_dir: Path, fitted: Fitted, train_enc: Sequence[Encoded], eval_enc: Sequence[Encoded],
                    started: float, extra: dict[str, float] | None = None) -> TrainingResult:
    return TrainingResult(
        adapter_dir=out_dir, epochs=fitted.epochs, train_loss=fitted.epochs[-1]["train_loss"] if fitted.epochs
        else 0.0, eval_loss=fitted.eval_loss, eval_loss_base=fitted.eval_loss_before, steps=fitted.steps,
        resumed_from_step=fitted.resumed, train_examples=len(train_enc), eval_examples=len(eval_enc),
        truncated=sum(e.truncated for e in train_enc) + sum(e.truncated for e in eval_enc),
        seconds=time.monotonic() - started, extra=extra or {})


def write_info(out_dir: Path, head: Mapping[str, Any], settings: LoraSettings, result: TrainingResult,
               info: Mapping[str, Any] | None) -> None:
    """`finetune.json` next to what a run made: what it is, its settings and metrics."""
    (out_dir / INFO_FILE).write_text(json.dumps({
        **head, "settings": settings.to_strings(),
        "metrics": {k: v for k, v in result.metrics().items() if k != "train_seconds"}, "epochs": result.epochs,
        **(info or {})}, sort_keys=True, indent=1))


class Interrupted(Exception):
    """Raised by `stop_after_step` (tests of resuming): the run stopped right after a checkpoint."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped after step {step}")
        self.step = step
