"""Distillation's student, free of any transport or database (torch, transformers; imported by the training
thread only).

- The teacher is the application's champion: an LLM directory, or (the champion being a LoRA adapter) its
  base with the adapter merged in, so the student starts from the weights that actually answer.
- The student is the teacher with fewer decoder layers: the same config with `num_hidden_layers = N`, the
  embeddings, N of its decoder layers (`kept_layers`: by default the first third of them from the bottom of
  the teacher and the rest from its top; or the first N), the final norm and the head copied from the
  teacher. Same tokenizer and chat template, so it is served exactly like any base LLM.
- It is trained full-weight on the kept decoder layers and the final norm (the embeddings, tied to the head,
  stay frozen: a third of SmolLM2-135M's weights, and the vocabulary the teacher learned); a low-rank
  update could not make N layers take over the work of the dropped ones. The loss is the teacher's answer
  tokens (sequence-level distillation: the logged answers are the labels), with the LoRA runs' encoding,
  loop, checkpoints and resume (`lora.fit`).
- Metrics: the eval loss of the teacher, of the student before training (just cut) and after, on the same
  held-out answers; both parameter counts and layer counts.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from flywheel.common.errors import FailedPrecondition
from flywheel.common.model_building import model_building
from flywheel.finetuner.hyperparams import (
    Example,
    LoraSettings,
    Progress,
    TrainingResult,
    kept_layers,
    student_layer_count,
)
from flywheel.finetuner.lora import (
    encode_example,
    eval_loss,
    fit,
    load_base,
    pad_id,
    training_result,
    write_info,
)

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def load_teacher(base_dir: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of the teacher: the base, with the adapter merged in when the champion is one."""
    model, tokenizer = load_base(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        with model_building():
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return model, tokenizer


def parameter_count(model: Any) -> int:
    """Distinct parameters (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def decoder_layers(model: Any) -> int:
    layers = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise FailedPrecondition(f"the teacher ({type(model).__name__}) has no num_hidden_layers in its config: "
                                 "only decoder-layer causal LMs can be cut into a student")
    return layers


def cut(teacher: Any, keep: list[int]) -> Any:
    """A new model: the teacher's config with the decoder layers `keep` (teacher indices, in order), and the
    teacher's weights for everything it keeps (embeddings, those layers renumbered, final norm, head)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding/full)
        config.layer_types = [config.layer_types[i] for i in keep]
    with model_building():
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    position = {source: target for target, source in enumerate(keep)}
    state = {}
    for name, value in teacher.state_dict().items():
        found = LAYER.search(name)
        if found is None:
            state[name] = value.detach().clone()
        elif int(found.group(1)) in position:
            start, end = found.span(1)
            state[name[:start] + str(position[int(found.group(1))]) + name[end:]] = value.detach().clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise FailedPrecondition(f"the teacher's weights do not fit a {len(keep)}-layer student: missing "
                                 f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tied:  # one tensor for the head and the embeddings, as in the teacher
        with model_building():
            student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def distill_student(teacher_dir: Path, train: Sequence[Example], evaluation: Sequence[Example],
                    settings: LoraSettings, *, checkpoints: Path, out_dir: Path, fingerprint: str,
                    adapter_dir: Path | None = None, teacher_ref: str = "", progress: Progress | None = None,
                    threads: int = 1, info: Mapping[str, Any] | None = None,
                    stop_after_step: int = 0) -> TrainingResult:
    """Cut the teacher at `teacher_dir` (+ `adapter_dir` merged) to `settings.student_layers` layers, train the
    student on `train` (resuming from the newest checkpoint made for `fingerprint`) and save it as a Hugging Face
    causal LM directory (safetensors, config, tokenizer with its chat template) in `out_dir`."""
    if not train:
        raise FailedPrecondition("no training examples")
    started = time.monotonic()
    torch.set_num_threads(max(1, threads))
    teacher, tokenizer = load_teacher(teacher_dir, adapter_dir)
    teacher_layers = decoder_layers(teacher)
    layers = student_layer_count(teacher_layers, settings.student_layers)
    pad = pad_id(tokenizer)
    train_enc = [encode_example(tokenizer, e, settings.max_length) for e in train]
    eval_enc = [encode_example(tokenizer, e, settings.max_length) for e in evaluation]
    teacher.eval()
    teacher_loss = eval_loss(teacher, eval_enc, pad, settings.batch_size)
    teacher_parameters = parameter_count(teacher)
    keep = kept_layers(teacher_layers, layers, settings.student_keep)
    student = cut(teacher, keep)
    del teacher
    student.get_input_embeddings().weight.requires_grad_(False)  # and the head tied to it
    torch.manual_seed(settings.seed)
    names = [n for n, p in student.named_parameters() if p.requires_grad]

    def weights() -> dict[str, torch.Tensor]:
        return {n: p for n, p in student.named_parameters() if p.requires_grad}

    def restore(saved: dict[str, torch.Tensor]) -> None:
        if sorted(saved) != sorted(names):
            raise FailedPrecondition("the checkpoint does not hold this student's trainable weights")
        student.load_state_dict(saved, strict=False)

    fitted = fit(student, train_enc, eval_enc, pad, settings, weights=weights, restore=restore,
                 baseline=lambda: eval_loss(student, eval_enc, pad, settings.batch_size), checkpoints=checkpoints,
                 fingerprint=fingerprint, progress=progress, stop_after_step=stop_after_step)
    student.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    parameters = parameter_count(student)
    extra = {"parameters": float(parameters), "teacher_parameters": float(teacher_parameters),
             "parameter_ratio": parameters / teacher_parameters, "student_layers": float(layers),
             "teacher_layers": float(teacher_layers)}
    info = {**(info or {}), "teacher_layers_kept": keep}
    if teacher_loss is not None:
        extra["eval_loss_teacher"] = teacher_loss
    result = training_result(out_dir, fitted, train_enc, eval_enc, started, extra)
    write_info(out_dir, {"format": "distilled-student", "distilled_from": teacher_ref}, settings, result, info)
    return result
