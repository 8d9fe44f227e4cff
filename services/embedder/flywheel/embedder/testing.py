"""A tiny sentence-transformers model for tests: built from a config in a folder in well under a second,
instead of loading the real 90 MB all-MiniLM-L6-v2.

A 2-layer BERT (hidden size 32) with random weights from a seed, a WordPiece tokenizer over a small
generated vocabulary (special tokens, letters, digits, punctuation and their `##` forms, a few hundred
common words: any ASCII text tokenizes, mostly letter by letter), mean pooling and Normalize, in the
same on-disk layout as the shipped model. Different seeds give different weights (a different artifact
sha256 and different vectors): a "new version" for promotion tests.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from flywheel.common import model_dirs
from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.model_building import model_building
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """the of and to a in is for on that by with as at from or an be this are it was not your you we
our if any can will may card fee fees account bank payment payments transaction transactions foreign
travel interest rate rates credit debit limit limits cash money charge charges dispute refund days month
year policy policies customer customers balance transfer online mobile app security fraud chargeback""".split()


def vocabulary() -> list[str]:
    singles = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL + singles + [f"##{c}" for c in string.ascii_lowercase + string.digits] + \
        sorted(set(WORDS) - set(singles))


def build_tiny_model(directory: Path, *, seed: int = 0, max_seq_length: int = 64, hidden_size: int = 32,
                     layers: int = 2, normalize: bool = True) -> Path:
    """Write a tiny sentence-transformers model into `directory` (created); returns it."""
    import inspect

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(vocabulary()) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        source: dict[str, object] = {"vocab": {token: i for i, token in enumerate(vocabulary())}}
    else:
        source = {"vocab_file": str(vocab)}
    tokenizer = BertTokenizerFast(**source, do_lower_case=True, model_max_length=max_seq_length)
    tokenizer.save_pretrained(str(directory))
    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden_size * 2,
                        max_position_embeddings=max(128, max_seq_length))
    torch.manual_seed(seed)
    with model_building():
        model = BertModel(config)
    model.save_pretrained(str(directory))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    return directory


async def register_tiny_model(registry: ModelRegistry, model_name: str, directory: Path, *, seed: int = 0,
                              max_seq_length: int = 64, tags: dict[str, str] | None = None,
                              kind: int = common_pb2.MODEL_KIND_EMBEDDING,
                              framework: str = "sentence-transformers") -> reg.ModelVersion:
    """Build a tiny model in `directory` and register it as a new version of `model_name`."""
    build_tiny_model(directory, seed=seed, max_seq_length=max_seq_length)
    return await registry.register(reg.ModelVersionSpec(
        model_name=model_name, kind=kind, framework=framework,  # type: ignore[arg-type]
        description=f"tiny test embedding model (seed {seed})", tags=dict(tags or {}),
        filename=f"{model_name}.tar"), model_dirs.pack_dir(directory))
