"""Loading a causal LM directory (Hugging Face, safetensors) for serving: model + tokenizer in eval mode,
optionally int8 dynamically quantized; and rendering chat messages with the tokenizer's template."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from flywheel.common.errors import FailedPrecondition, InvalidArgument
from flywheel.common.model_building import model_building

QUANTIZATIONS = ("none", "int8", "int8-all")
# Linear layers "int8" keeps in float32: the output head (tied to the embeddings; its int8 error lands directly
# on the logits) and the MLP down projections (their inputs carry the activation outliers). Measured on
# SmolLM2-135M (bench/results/generation.md): quantizing every Linear per tensor ("int8-all") is the fastest
# but more than doubles perplexity; "int8" (per output channel, those layers kept) costs far less quality.
INT8_KEEP_FLOAT = ("lm_head", "down_proj")
ROLES = ("system", "user", "assistant")


def load_model_dir(directory: Path | str, *, quantize: str = "none") -> tuple[Any, Any]:
    """(model, tokenizer) from a model directory (blocking: run it in a worker thread)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if quantize not in QUANTIZATIONS:
        raise InvalidArgument(f"quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FailedPrecondition(f"{path} is not a Hugging Face model directory (no config.json)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no progress bars or notices in the service's logs
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with model_building():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    model.requires_grad_(False)
    if quantize != "none":
        model = quantize_int8(model, every_linear=quantize == "int8-all")
    return model, tokenizer


def quantize_int8(model: Any, *, every_linear: bool = False) -> Any:
    """int8 dynamic quantization (weights int8, activations quantized per batch at run time) of the Linear
    layers: all of them per tensor (`every_linear`), or per output channel except `INT8_KEEP_FLOAT`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices (torchao is the successor)
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        if every_linear:
            spec = {name: default_dynamic_qconfig for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)}
        else:
            spec = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and not any(k in name for k in INT8_KEEP_FLOAT)}
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, model_name: str = "") -> list[int]:
    """Token ids of a chat (OpenAI-style messages) in the model's template, ending with the assistant's turn.
    InvalidArgument for an empty chat, a bad role or content, or a model without a chat template."""
    if not messages:
        raise InvalidArgument("messages is empty: give at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidArgument(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidArgument(f"messages[{i}].content must be a string")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument(f"model {model_name!r} has no chat template: send a plain prompt")
    ids = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                        add_generation_prompt=True, tokenize=True, return_dict=False)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a plain text prompt (no special tokens added)."""
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgument("the prompt is empty")
    return [int(i) for i in tokenizer.encode(prompt, add_special_tokens=False)]
