"""The ports use cases depend on: the registry and the feature store as abstract classes, free of gRPC
(the adapters are `registry.RegistryClient` and `featurestore.FeatureStoreClient`), so a test can
hand a use case a fake. Failures are domain errors (`flywheel.common.errors`)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

# What an artifact to register can be: its bytes, a file, or its bytes in chunks.
ArtifactSource = bytes | Path | AsyncIterable[bytes]


class ModelRegistry(abc.ABC):
    """Model versions: looked up, registered, downloaded, annotated."""

    @abc.abstractmethod
    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        """A version by number, or by alias when `alias` is set; None when the model, version or alias does
        not exist."""

    async def version_of(self, model_name: str, alias: str) -> int:
        """The version an alias points at; 0 when the model or the alias does not exist."""
        found = await self.get_version(model_name, alias=alias)
        return found.version if found is not None else 0

    @abc.abstractmethod
    async def models_with_alias(self, alias: str) -> list[str]:
        """The names of the models that have `alias` (e.g. every model with a champion)."""

    @abc.abstractmethod
    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        """The newest version tagged key=value (None if none, or the model is unknown)."""

    @abc.abstractmethod
    async def register(self, spec: reg.ModelVersionSpec, artifact: ArtifactSource, *,
                       on_progress: Callable[[int], None] | None = None) -> reg.ModelVersion:
        """Register a new version holding `artifact`; `on_progress` hears the size of every chunk sent."""

    @abc.abstractmethod
    async def download(self, model_name: str, version: int = 0, alias: str = "") -> bytes:
        """A version's artifact, checked against its sha256."""

    @abc.abstractmethod
    async def record_lineage(self, model_name: str, version: int, lineage: common_pb2.Lineage) -> reg.ModelVersion:
        """Merge into a version's lineage (set fields overwrite, lists append, report refs are kept once)."""

    async def close(self) -> None:
        """Release what the adapter holds open (nothing, unless it keeps a channel)."""
        return None


@dataclass
class HistoricalFeatures:
    """Feature values for entity rows, in request order: `rows[i][j]` is feature `names[j]` of row i."""

    names: list[str]
    rows: list[list[Any]]


class FeatureSource(abc.ABC):
    """Where training and evaluation features come from."""

    @abc.abstractmethod
    async def historical(self, feature_service: str, keys: Sequence[dict[str, str | int]],
                         times: Sequence[datetime], progress: Callable[[int], Awaitable[None]] | None = None,
                         ) -> HistoricalFeatures:
        """Point-in-time correct values of `feature_service` for each (keys, time), in order; `progress`
        hears how many rows have arrived."""


@dataclass
class Embeddings:
    """Vectors for texts, in order, and the model version that made them (never mix two versions)."""

    model_name: str
    model_version: int
    dimensions: int
    vectors: list[list[float]]
    normalized: bool
    # Per text: tokens read, and whether the text was cut at the model's maximum.
    token_counts: list[int]
    truncated: list[bool]


class TextEmbedder(abc.ABC):
    """Turns texts into vectors with one version of an embedding model."""

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str], *, model_name: str = "", model_version: int = 0,
                    normalize: bool | None = None) -> Embeddings:
        """Embed `texts` with `model_name` (empty = the embedder's default model) at `model_version`
        (0 = its champion); `normalize` None = the model's own setting."""

    async def close(self) -> None:
        """Release what the adapter holds open."""
        return None


class DocumentRetriever(abc.ABC):
    """The chunks of a tenant's collection that best answer a query (the retriever service)."""

    @abc.abstractmethod
    async def retrieve(self, collection: str, *, text: str = "", vector: Sequence[float] | None = None, k: int = 0,
                       tenant: str = "", filter: Any = None, weights: tuple[float, float] | None = None,
                       rrf_k: int = 0, text_for_keywords: str = "") -> Any:
        """The best `k` chunks (a `flywheel.retriever.v1.RetrieveResponse`) for a text query or a query vector."""

    async def close(self) -> None:
        """Release what the adapter holds open."""
        return None


@dataclass(frozen=True)
class GuardChunk:
    """A retrieved chunk an answer was generated from (groundedness; its PII is not a leak)."""

    text: str
    chunk_id: str = ""
    document_id: str = ""
    title: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision on one check (see flywheel.guard.v1.Verdict)."""

    verdict_id: str
    # allow, redact, block or escalate.
    action: str
    # The text must not be used; answer with `message` (finish_reason content_filter).
    blocked: bool
    # Sent to human review.
    escalated: bool
    # The text to use (PII masked where the policy says); empty when blocked. For a streamed window that is
    # not final: the window minus its last `hold_chars` characters (send those again with the next window).
    text: str
    rule: str
    category: str
    message: str
    application: str
    policy_version: int
    hold_chars: int = 0
    # (kind, start, end) of each masked span, in the checked text.
    spans: tuple[tuple[str, int, int], ...] = ()
    scores: dict[str, float] | None = None
    rails_fired: tuple[str, ...] = ()
    detectors: str = ""
    latency_ms: float = 0.0


@dataclass(frozen=True)
class GuardPolicy:
    """What a caller needs to know of an application's guard policy before checking."""

    application: str
    version: int
    # Guard down or too slow: refuse (a clear error), never answer unchecked.
    fail_closed: bool
    stream_window_chars: int
    # completion (finish_reason content_filter with the message) or error (HTTP 400, code content_filter).
    blocked_input_response: str
    check_timeout_ms: int
    yaml: str = ""


class ContentGuard(abc.ABC):
    """Checks an LLM application's inputs and outputs against its guard policy (the guard service)."""

    @abc.abstractmethod
    async def check_input(self, application: str, text: str, *, request_id: str = "",
                          context: Sequence[GuardChunk] = ()) -> GuardVerdict:
        """Check a user's input before retrieval and generation."""

    @abc.abstractmethod
    async def check_output(self, application: str, text: str, *, request_id: str = "", user_input: str = "",
                           context: Sequence[GuardChunk] = (), passed_text: str = "", final: bool = True,
                           ) -> GuardVerdict:
        """Check an answer, or one window of a streamed answer (`passed_text`: the raw text already passed;
        `final`: False while more windows follow)."""

    @abc.abstractmethod
    async def policy(self, application: str) -> GuardPolicy | None:
        """The application's newest policy; None when it has none (then it is not guarded)."""

    async def close(self) -> None:
        """Release what the adapter holds open."""
        return None


@dataclass
class GeneratedCitation:
    chunk_id: str
    document_id: str
    title: str
    score: float


@dataclass
class GeneratedAnswer:
    """One whole generation (the stream collected), as inference answered it."""

    text: str
    finish_reason: str
    # The version that answered, and for applications the prompt template version used.
    model: str
    model_version: int
    prompt_name: str
    prompt_version: int
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    # Wall time of the whole call, measured by the client.
    latency_s: float
    # Applications: the chunks the answer cites, and whether it declined for want of a supporting passage.
    citations: list[GeneratedCitation]
    refused: bool
    request_id: str


class TextGenerator(abc.ABC):
    """Chat answers from inference (a served LLM, adapter or application), optionally pinned to versions."""

    @abc.abstractmethod
    async def generate(self, model: str, messages: Sequence[dict[str, str]], *, max_tokens: int = 0,
                       temperature: float | None = None, seed: int | None = None, model_version: int = 0,
                       prompt_version: int = 0, user: str = "") -> GeneratedAnswer:
        """Answer `messages` with `model` (an LLM, adapter or application name). `model_version` /
        `prompt_version` pin a version instead of what is served (evaluation traffic: no cache, logged
        with arm EVALUATION); 0 = what is served."""

    async def close(self) -> None:
        """Release what the adapter holds open."""
        return None
