"""The retriever's domain types: what the use cases, the store and the transports exchange (wire
types stop at api.py and handlers.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flywheel.common.errors import InvalidArgument

DEFAULT_TENANT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_DOCUMENT_ID = 512
MAX_K = 100
DEFAULT_K = 5
DEFAULT_RRF_K = 60
# pgvector's HNSW indexes `vector` columns of up to 2,000 dimensions.
MAX_DIMENSIONS = 2000


def tenant_name(tenant: str) -> str:
    """The tenant of a request: "" is the default tenant."""
    tenant = tenant.strip() or DEFAULT_TENANT
    if not NAME.match(tenant):
        raise InvalidArgument(f"tenant {tenant!r} must be 1-128 letters, digits, '.', '_' or '-' (not first)")
    return tenant


def collection_name(name: str) -> str:
    if not name:
        raise InvalidArgument("collection is empty")
    if not NAME.match(name):
        raise InvalidArgument(f"collection {name!r} must be 1-128 letters, digits, '.', '_' or '-' (not first)")
    return name


def document_id_ok(document_id: str) -> str:
    if not document_id:
        raise InvalidArgument("document_id is empty")
    if len(document_id) > MAX_DOCUMENT_ID or any(ord(c) < 32 for c in document_id):
        raise InvalidArgument(f"document_id {document_id[:80]!r} must be at most {MAX_DOCUMENT_ID} characters "
                              "without control characters")
    return document_id


@dataclass
class Collection:
    id: int
    tenant: str
    name: str
    description: str
    embedding_model: str
    active_version: int | None
    dimensions: int | None
    active_chunks: int
    pending_version: int | None
    pending_dimensions: int | None
    pending_chunks: int
    reindex_cursor: str | None
    created_at: datetime
    # Filled by listings only.
    document_count: int = 0
    pending_documents_done: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Collection:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})

    @property
    def ref(self) -> str:
        return f"{self.tenant}/{self.name}"

    def generation_dimensions(self, version: int) -> int | None:
        return self.dimensions if version == self.active_version else self.pending_dimensions


@dataclass
class NewDocument:
    """A document to store: validated, its text extracted."""

    document_id: str
    title: str
    source: str
    mime_type: str
    text: str
    content_sha256: str
    doc_type: str = ""
    tags: list[str] = field(default_factory=list)
    document_date: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Document:
    collection_id: int
    document_id: str
    tenant: str
    title: str
    source: str
    mime_type: str
    text: str
    content_sha256: str
    characters: int
    revision: int
    doc_type: str
    tags: list[str]
    document_date: datetime | None
    metadata: dict[str, str]
    deleted: bool
    active_revision: int | None
    pending_revision: int | None
    ingested_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Document:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})

    @property
    def indexed(self) -> bool:
        """Whether the chunks of the current revision are served (active model version)."""
        return not self.deleted and self.active_revision == self.revision


@dataclass(frozen=True)
class ChunkIn:
    """A chunk with its vector, as the embedder sends it."""

    chunk_id: str
    index: int
    text: str
    start_offset: int
    end_offset: int
    section: str
    token_count: int
    vector: list[float]


@dataclass(frozen=True)
class Filter:
    """Metadata filters; every set field must match."""

    doc_types: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    date_from: datetime | None = None
    date_to: datetime | None = None
    document_ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.doc_types or self.tags_any or self.tags_all or self.date_from or self.date_to
                    or self.document_ids)


@dataclass(frozen=True)
class Query:
    """A retrieval request, validated (see `retriever.plan_query`)."""

    tenant: str
    collection: str
    text: str = ""
    # float32, one dimension (see `retriever.plan_query`).
    vector: Any = None
    keywords: str = ""
    k: int = DEFAULT_K
    filter: Filter = Filter()
    vector_weight: float = 1.0
    text_weight: float = 0.0
    rrf_k: int = DEFAULT_RRF_K


@dataclass
class Hit:
    """One retrieved chunk."""

    chunk_id: str
    document_id: str
    title: str
    source: str
    index: int
    text: str
    start_offset: int
    end_offset: int
    section: str
    score: float
    vector_rank: int
    text_rank: int
    similarity: float
    metadata: dict[str, str]
    doc_type: str
    tags: list[str]


@dataclass
class Retrieved:
    hits: list[Hit]
    model_name: str
    model_version: int
    # How the vector ranking ran: "exact", "hnsw" or "" (no vector ranking).
    path: str = ""
    # The collection's active version when the search ran (None: not known, nothing was found).
    current_version: int | None = None


@dataclass
class IngestOutcome:
    document_id: str
    accepted: bool
    revision: int
    content_sha256: str
    characters: int


@dataclass
class RawDocument:
    """A document as a caller sends it: raw bytes and what it says about them."""

    document_id: str = ""
    title: str = ""
    source: str = ""
    mime_type: str = ""
    content: bytes = b""
    metadata: dict[str, str] = field(default_factory=dict)
    doc_type: str = ""
    tags: list[str] = field(default_factory=list)
    document_date: datetime | None = None
