"""The Embed use case: validate texts, pick the model version, embed through its batcher, normalise on
request, report token counts and truncation. Free of gRPC: the servicer converts at its edge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from flywheel.common.errors import InvalidArgument
from flywheel.embedder.catalog import ModelCatalog, ServedVersion
from flywheel.embedder.model import normalized

TRUNCATED = Counter("flywheel_embedder_truncated_texts_total",
                    "Texts longer than the model's maximum, embedded from their first max_seq_length tokens.",
                    ["model", "version"])


@dataclass
class EmbedResult:
    """Vectors in the order of the texts, made by one model version."""

    model_name: str
    model_version: int
    dimensions: int
    normalized: bool
    vectors: np.ndarray  # (texts, dimensions) float32
    token_counts: list[int]  # tokens the model read (after truncation)
    original_token_counts: list[int]  # tokens of the whole text
    truncated: list[bool]


class Embedder:
    def __init__(self, catalog: ModelCatalog, *, max_texts: int, max_total_chars: int) -> None:
        self.catalog = catalog
        self.max_texts = max_texts
        self.max_total_chars = max_total_chars

    def validate(self, texts: Sequence[str]) -> None:
        """Empty lists, empty (or blank) texts and requests over the limits are refused: a blank text's
        vector is a constant that matches any document equally, so sending one is a caller's bug."""
        if not texts:
            raise InvalidArgument("texts is empty: send at least one text")
        if len(texts) > self.max_texts:
            raise InvalidArgument(f"texts has {len(texts)} texts, over the limit of {self.max_texts} per request "
                                  "(FLYWHEEL_EMBEDDER_MAX_TEXTS): split it")
        total = sum(len(t) for t in texts)
        if total > self.max_total_chars:
            raise InvalidArgument(f"texts hold {total} characters, over the limit of {self.max_total_chars} per "
                                  "request (FLYWHEEL_EMBEDDER_MAX_TOTAL_CHARS): split it")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{i}] is empty or blank: every text must have content")

    async def embed(self, texts: Sequence[str], *, model_name: str = "", model_version: int = 0,
                    normalize: bool | None = None) -> EmbedResult:
        self.validate(texts)
        served = await self.catalog.get(model_name, model_version)
        return await embed_with(served, list(texts), normalize=normalize)


async def embed_with(served: ServedVersion, texts: list[str], *, normalize: bool | None,
                     background: bool = False) -> EmbedResult:
    """Embed `texts` with exactly this loaded version (all of them: never split across versions)."""
    results = await served.batcher.submit(texts, background=background)
    model = served.model
    vectors = np.stack([r.vector for r in results]) if results else np.zeros((0, model.dimensions), np.float32)
    unit = model.normalizes if normalize is None else normalize
    if unit:
        vectors = normalized(vectors)
    originals = [r.token_count for r in results]
    truncated = [c > model.max_seq_length for c in originals]
    if any(truncated):
        TRUNCATED.labels(model.name, str(model.version)).inc(sum(truncated))
    return EmbedResult(model.name, model.version, model.dimensions, unit, vectors,
                       [min(c, model.max_seq_length) for c in originals], originals, truncated)
