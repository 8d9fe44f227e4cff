"""What the retriever's tests share: a tiny PDF writer, deterministic text vectors (hashed bag of words, so
a query shares direction with the chunks that share its words), an in-process `TextEmbedder` built on
them, and documents.embedded events built the way the embedder builds them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from flywheel.common.clients.ports import Embeddings, TextEmbedder
from flywheel.common.events import Event
from flywheel.common.topics import DOCUMENTS_EMBEDDED
from flywheel.proto.events.v1 import common_pb2, documents_pb2

WORD = re.compile(r"[a-z0-9]+")


def tiny_pdf(pages: Sequence[Sequence[str]], title: str = "") -> bytes:
    """A valid PDF whose pages hold the given lines (Helvetica, so any PDF reader extracts them)."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    font_id = 3 + 2 * len(pages)
    info_id = font_id + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, lines in enumerate(pages):
        body = "BT /F1 12 Tf 72 720 Td " + " ".join(
            f"({line.replace('(', '[').replace(')', ']')}) Tj 0 -16 Td" for line in lines) + " ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
                       f" /Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode())
        objects.append(f"<< /Length {len(body)} >>\nstream\n{body}\nendstream".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def word_vector(text: str, dims: int) -> list[float]:
    """A unit vector of `text`'s words, each hashed to a dimension and a sign (deterministic)."""
    v = np.zeros(dims)
    for word in WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        v[h % dims] += 1.0 if (h >> 32) & 1 else -1.0
    norm = np.linalg.norm(v)
    if norm == 0:
        v[0], norm = 1.0, 1.0
    return (v / norm).tolist()


class WordEmbedder(TextEmbedder):
    """An in-process embedder: `dims[version]` dimensions per model version; records what it was asked."""

    def __init__(self, model_name: str, dims: dict[int, int]) -> None:
        self.model_name = model_name
        self.dims = dims
        self.calls: list[tuple[str, int]] = []

    async def embed(self, texts: Sequence[str], *, model_name: str = "", model_version: int = 0,
                    normalize: bool | None = None) -> Embeddings:
        self.calls.append((model_name, model_version))
        version = model_version or max(self.dims)
        d = self.dims[version]
        return Embeddings(model_name=model_name or self.model_name, model_version=version, dimensions=d,
                          vectors=[word_vector(t, d) for t in texts], normalized=True,
                          token_counts=[len(t.split()) for t in texts], truncated=[False for _ in texts])


def chunk_texts(text: str) -> list[tuple[str, int, int, str]]:
    """(text, start, end, section) per paragraph; headings become the section of what follows."""
    out, section, start = [], "", 0
    for block in text.split("\n\n"):
        begin = text.index(block, start)
        start = begin + len(block)
        if block.startswith("#"):
            section = block.lstrip("#").strip()
            continue
        if block.strip():
            out.append((block, begin, begin + len(block), section))
    return out or [(text, 0, len(text), "")]


def embedded_event(ingested: documents_pb2.DocumentIngested, version: int, dims: int, *,
                   model_name: str = "") -> Event:
    """The documents.embedded event the embedder would answer `ingested` with (paragraph chunks, word vectors)."""
    chunks = [documents_pb2.Chunk(chunk_id=hashlib.sha256(f"{ingested.document_id}|{i}|{t}".encode()).hexdigest()[:32],
                                  index=i, text=t, start_offset=s, end_offset=e, section=sec,
                                  vector=word_vector(f"{sec} {t}", dims), token_count=len(t.split()))
              for i, (t, s, e, sec) in enumerate(chunk_texts(ingested.text))]
    payload = documents_pb2.DocumentEmbedded(
        document_id=ingested.document_id, collection=ingested.collection, title=ingested.title,
        embedding_model=common_pb2.ModelRef(name=model_name or ingested.embed_with.name, version=version),
        dimensions=dims, chunks=chunks, tenant=ingested.tenant, source=ingested.source, revision=ingested.revision,
        content_sha256=ingested.content_sha256, doc_type=ingested.doc_type, tags=ingested.tags, normalized=True)
    return Event(DOCUMENTS_EMBEDDED, ingested.document_id, payload, "tests/embedder")
