"""One loaded sentence-transformers model version: encode a batch (in a worker thread), count tokens,
give the token spans the chunker cuts at.

The model runs without its Normalize module, so one forward pass serves callers that want unit vectors
and callers that do not: `normalize` is applied per request afterwards (the same L2 scaling the module
would apply). `normalizes` says whether the model's own pipeline ends with it (the default of a request).
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from flywheel.common.model_building import model_building

try:
    from sentence_transformers.sentence_transformer.modules import Normalize
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Normalize  # type: ignore[no-redef]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedText:
    """One text's vector (not normalised) and its token count before truncation (special tokens included,
    as the model reads it)."""

    vector: np.ndarray
    token_count: int


class EmbeddingModel:
    def __init__(self, name: str, version: int, model: SentenceTransformer) -> None:
        self.name = name
        self.version = version
        modules = list(model)
        self.normalizes = any(isinstance(m, Normalize) for m in modules)
        with model_building():
            self._model = SentenceTransformer(modules=[m for m in modules if not isinstance(m, Normalize)],
                                              device="cpu") if self.normalizes else model
        self._model.eval()
        self.tokenizer = model.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{name} v{version}: the tokenizer must be a fast (Rust) tokenizer: chunking needs "
                             "its character offsets")
        # A Hugging Face fast tokenizer sets truncation and padding on its Rust object at every call, so two
        # threads sharing one can change each other's settings mid-call. `encode` and `count_tokens` run on
        # the encoder thread only; the chunker (other threads, several documents at once) gets its own copy.
        self._spans_tokenizer = copy.deepcopy(self.tokenizer)
        self._spans_lock = threading.Lock()
        self.max_seq_length = int(model.max_seq_length)
        self.special_tokens = int(self.tokenizer.num_special_tokens_to_add(pair=False))
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimensions = int(dimension())

    @property
    def max_content_tokens(self) -> int:
        """The most tokens of text the model reads (its maximum minus its special tokens)."""
        return self.max_seq_length - self.special_tokens

    def encode(self, texts: list[str]) -> list[EmbeddedText]:
        """Encode in one forward pass (blocking: call it in a worker thread)."""
        counts = self.count_tokens(texts)
        vectors = np.asarray(self._model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                                show_progress_bar=False), dtype=np.float32)
        return [EmbeddedText(row, count) for row, count in zip(vectors, counts, strict=True)]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation, special tokens included (on the encoder thread)."""
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                                 return_attention_mask=False, return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the text's tokens (no special tokens), for the chunker."""
        with self._spans_lock:
            encoded = self._spans_tokenizer(text, add_special_tokens=False, truncation=False, verbose=False,
                                            return_offsets_mapping=True, return_attention_mask=False,
                                            return_token_type_ids=False)
        return [(int(s), int(e)) for s, e in encoded["offset_mapping"]]


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as sentence-transformers' Normalize does."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def load_model_dir(path: Path, name: str, version: int) -> EmbeddingModel:
    """Load a sentence-transformers model directory on the CPU and warm it up (blocking)."""
    with model_building():
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    loaded = EmbeddingModel(name, version, model)
    loaded.encode(["warm up"])
    log.info("embedding model loaded", extra={"model": name, "version": version, "dimensions": loaded.dimensions,
                                              "max_seq_length": loaded.max_seq_length,
                                              "normalizes": loaded.normalizes})
    return loaded
