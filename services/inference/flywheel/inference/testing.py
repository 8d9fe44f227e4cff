"""Test and benchmark helpers: a tiny `flywheel.predictive/v1` artifact built from config.

`build_predictive_artifact` makes a valid artifact (written by `flywheel.predictive.artifact`, with
the `model.json` keys of the trainer's that the inference service relies on) holding a TorchScript
MLP of seeded random weights: no training, no data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flywheel.common.model_building import model_building
from flywheel.predictive.artifact import InputSchema, write_artifact
from flywheel.predictive.scoring import to_torchscript


class _TinyScoringModule(nn.Module):
    """(numeric float32 [N, n] raw, NaN allowed; categorical int64 [N, k] vocab indices) -> P [N]."""

    def __init__(self, n_numeric: int, category_sizes: list[int], hidden: tuple[int, ...],
                 constant: float) -> None:
        super().__init__()
        self.register_buffer("category_sizes", torch.tensor(category_sizes, dtype=torch.int64).reshape(-1))
        # constant >= 0: every row scores exactly `constant` (models whose answers reveal them).
        self.register_buffer("constant", torch.tensor(float(constant)))
        layers: list[nn.Module] = []
        width = n_numeric + sum(category_sizes)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = numeric.to(torch.float32)
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # NaN / inf -> 0 (imputation)
        parts = [x]
        for j in range(self.category_sizes.shape[0]):
            size = int(self.category_sizes[j])
            index = categorical[:, j].to(torch.int64)
            index = torch.where((index < 0) | (index >= size), torch.full_like(index, size - 1), index)
            parts.append(nn.functional.one_hot(index, size).to(torch.float32))
        p = torch.sigmoid(self.mlp(torch.cat(parts, dim=1)).squeeze(1))
        if bool(self.constant >= 0.0):
            p = torch.full_like(p, float(self.constant))
        return p


def build_predictive_artifact(n_numeric: int = 30, vocab: dict[str, list[str]] | None = None,
                              hidden: tuple[int, ...] = (64, 32), seed: int = 0, threshold: float = 0.5,
                              *, name: str = "fraud", constant: float | None = None,
                              numeric_features: list[str] | None = None, feature_service: str | None = None,
                              entity_keys: list[str] | None = None,
                              entity_key_types: dict[str, str] | None = None) -> bytes:
    """The tar.gz bytes of a `flywheel.predictive/v1` artifact with seeded random weights.

    `vocab` maps each categorical feature to its categories (index len(vocab) = "other");
    `constant` (0..1) makes every prediction that exact probability. `numeric_features` names the numeric
    features (default x0..x{n-1}; it overrides `n_numeric`); `feature_service` + `entity_keys` (+
    `entity_key_types`) write the `spec` that lets requests carry entity ids instead of the features.
    """
    vocab = dict(vocab or {})
    categorical = list(vocab)
    numeric = list(numeric_features) if numeric_features is not None else [f"x{i}" for i in range(n_numeric)]
    torch.manual_seed(seed)
    module = _TinyScoringModule(len(numeric), [len(vocab[f]) + 1 for f in categorical], tuple(hidden),
                                -1.0 if constant is None else constant)
    metadata: dict[str, Any] = {"run_id": f"testing-seed-{seed}", "metrics": {}, "torch_version": torch.__version__}
    if feature_service:  # what the trainer writes (ModelSpec.model_dump), as far as inference reads it
        metadata["spec"] = {"name": name, "kind": "predictive", "features": {"feature_service": feature_service},
                            "entity_keys": list(entity_keys or []), "entity_key_types": dict(entity_key_types or {}),
                            "numeric": numeric, "categorical": categorical}
    return write_artifact(name=name, schema=InputSchema(numeric, categorical, vocab), model_pt=to_torchscript(module),
                          threshold=threshold, metadata=metadata)



# -- a tiny causal LM and LoRA adapter (tests and benchmarks; nothing downloads) ------------------------

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# What the tokenizer learns its merges from: a little English, some accents, CJK and an emoji, so that
# multi-byte characters span several tokens (the incremental decoder's hard case).
TINY_CORPUS = [
    "The bank refunds card payments that were not authorised by the customer.",
    "A chargeback is filed when a customer disputes a payment with the card issuer.",
    "Customers can freeze their card in the app and order a new one at no cost.",
    "Transfers above the daily limit need a second confirmation by text message.",
    "Interest on savings is paid monthly; fees are listed in the price schedule.",
    "Café crème, naïve résumé, Zürich, São Paulo, Ærøskøbing.",
    "日本語のテキストと絵文字 🙂 も少し含めます。",
    "system user assistant hello world question answer policy document support",
]


def build_tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained on `TINY_CORPUS`, with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                   chat_template=TINY_CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


def build_tiny_llm(directory: Any, *, seed: int = 0, hidden: int = 48, layers: int = 2,
                   max_context: int = 256) -> Any:
    """Write a tiny Llama causal LM (random seeded weights) with its tokenizer to `directory` (a Hugging
    Face model directory, as registered with kind MODEL_KIND_LLM); returns the path."""
    from pathlib import Path

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(directory)
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_context, tie_word_embeddings=True, initializer_range=0.3,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    with model_building():
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=eos)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_adapter(base_directory: Any, directory: Any, *, seed: int = 1, rank: int = 4) -> Any:
    """Write a LoRA adapter (PEFT, random non-zero weights so it changes the outputs) for the tiny model at
    `base_directory` to `directory` (registered with kind MODEL_KIND_LORA_ADAPTER); returns the path."""
    from pathlib import Path

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with model_building():
        base = AutoModelForCausalLM.from_pretrained(base_directory, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank * 4, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    with model_building():
        model = get_peft_model(base, config)
    with torch.no_grad():  # larger than PEFT's random init, so the adapter visibly changes greedy outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    model.save_pretrained(Path(directory))
    return Path(directory)


def build_tiny_llm_artifact(directory: Any, *, seed: int = 0) -> bytes:
    """The registry artifact (deterministic tar) of a tiny model built in `directory`."""
    from flywheel.common.model_dirs import pack_dir

    return pack_dir(build_tiny_llm(directory, seed=seed))


def build_tiny_adapter_artifact(base_directory: Any, directory: Any, *, seed: int = 1) -> bytes:
    from flywheel.common.model_dirs import pack_dir

    return pack_dir(build_tiny_adapter(base_directory, directory, seed=seed))
