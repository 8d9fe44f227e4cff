"""Cutting a document into chunks an embedding model reads whole (pure: no model, no I/O).

Markdown is split at its ATX headings (`#` .. `######`, outside fenced code) first; each chunk keeps
the heading path it sits under as its `section` ("Fees > Foreign transactions"). Plain text (and text
extracted from HTML or PDF) is one section. Each section is then cut into windows of at most
`chunk_tokens` tokens of the model's tokenizer, consecutive windows sharing up to `overlap` tokens.
A window ends at the best boundary in its second half: a blank line, then a line break, then the end
of a sentence, then the end of a word; only a text without any of those is cut inside a word. The
overlap starts at a sentence start where there is one, else at a word start.

Offsets are character offsets into the document text, and a chunk's text is exactly
`text[start:end]`. A chunk's id is a hash of the document id, its index and its text, so an unchanged
document (same text, same tokenizer, same settings) gets the same ids every time it is embedded.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

# The character spans of a text's tokens, in order, without the model's special tokens.
Tokenize = Callable[[str], list[tuple[int, int]]]

MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
SECTION_SEPARATOR = " > "
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Sentence ends, also the ideographic full stop and the full-width ! and ?.
_SENTENCE_END = (".", "!", "?", "\u3002", "\uff01", "\uff1f")

# Boundary strengths between two tokens (higher is a better place to cut).
_INSIDE_WORD, _WORD, _SENTENCE, _LINE, _PARAGRAPH = range(5)


@dataclass(frozen=True)
class Section:
    """A span of the document under one heading path ("" = before any heading, or plain text)."""

    path: str
    start: int
    end: int


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int
    token_count: int
    section: str
    chunk_id: str


def chunk_id(document_id: str, index: int, text: str) -> str:
    """Stable id of a chunk: sha256 of (document id, index, text), 32 hex characters."""
    digest = hashlib.sha256()
    for part in (document_id, str(index), text):
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))  # length-prefixed: no two tuples hash alike
        digest.update(encoded)
    return digest.hexdigest()[:32]


def is_markdown(mime_type: str) -> bool:
    return mime_type.split(";", 1)[0].strip().lower() in MARKDOWN_TYPES


def markdown_sections(text: str) -> list[Section]:
    """The document cut at its headings; a heading's section starts at its heading line (so the heading
    is part of the chunk text) and runs to the next heading. Sections with nothing but their heading are
    left out (their title lives on in their subsections' paths)."""
    headings: list[tuple[int, int, str, int]] = []  # (line start, level, title, end of the heading line)
    fence: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        opened = _FENCE.match(stripped)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        elif opened:
            fence = opened.group(1)
        else:
            match = _HEADING.match(stripped)
            if match and match.group(2).strip():
                headings.append((offset, len(match.group(1)), match.group(2).strip(), offset + len(line)))
        offset += len(line)
    sections: list[Section] = []
    if not headings or headings[0][0] > 0:
        first = headings[0][0] if headings else len(text)
        if text[:first].strip():
            sections.append(Section("", 0, first))
    stack: list[tuple[int, str]] = []
    for i, (start, level, title, body_start) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        end = headings[i + 1][0] if i + 1 < len(headings) else len(text)
        if text[body_start:end].strip():
            sections.append(Section(SECTION_SEPARATOR.join(t for _, t in stack), start, end))
    return sections


def plain_sections(text: str) -> list[Section]:
    return [Section("", 0, len(text))] if text.strip() else []


def _boundary(text: str, spans: list[tuple[int, int]], k: int) -> int:
    """How good a cut before token k is (0 < k < len(spans))."""
    gap = text[spans[k - 1][1]:spans[k][0]]
    if not gap:
        return _INSIDE_WORD
    if gap.count("\n") >= 2:
        return _PARAGRAPH
    if "\n" in gap:
        return _LINE
    if text[spans[k - 1][0]:spans[k - 1][1]].endswith(_SENTENCE_END) and gap.isspace():
        return _SENTENCE
    return _WORD  # spaces, or characters the tokenizer drops (control characters)


def _windows(text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index ranges [i, k) covering all tokens, each at most `size` long, consecutive ones sharing
    at most `overlap` tokens."""
    n = len(spans)
    windows: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if n - i <= size:
            windows.append((i, n))
            break
        hi = i + size
        lo = i + math.ceil(size / 2)
        best, cut = -1, hi
        for k in range(hi, lo - 1, -1):  # latest first: ties keep the longer window
            score = _boundary(text, spans, k)
            if score > best:
                best, cut = score, k
                if score == _PARAGRAPH:
                    break
        windows.append((i, cut))
        nxt = cut
        if overlap > 0:
            first = max(cut - overlap, i + 1)
            starts = [(k, _boundary(text, spans, k)) for k in range(first, cut)]
            sentence = [k for k, s in starts if s >= _SENTENCE]
            word = [k for k, s in starts if s >= _WORD]
            nxt = sentence[0] if sentence else word[0] if word else cut
        i = nxt
    return windows


def chunk_sections(document_id: str, text: str, sections: list[Section], tokenize: Tokenize, *,
                   chunk_tokens: int, overlap: int) -> list[Chunk]:
    """The chunks of the sections of `text`, numbered from 0 across the document."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if not 0 <= overlap * 2 <= chunk_tokens:
        raise ValueError(f"overlap must be between 0 and half of chunk_tokens ({chunk_tokens}), got {overlap}")
    chunks: list[Chunk] = []
    for section in sections:
        body = text[section.start:section.end]
        spans = [(section.start + s, section.start + e) for s, e in tokenize(body) if e > s]
        for i, k in _windows(text, spans, chunk_tokens, overlap):
            start, end = spans[i][0], spans[k - 1][1]
            piece = text[start:end]
            index = len(chunks)
            chunks.append(Chunk(index, piece, start, end, k - i, section.path, chunk_id(document_id, index, piece)))
    return chunks


def chunk_document(document_id: str, text: str, mime_type: str, tokenize: Tokenize, *, chunk_tokens: int,
                   overlap: int) -> list[Chunk]:
    """Markdown (by mime type) at its headings then by tokens; anything else by tokens, cut preferably
    at paragraphs, then lines, sentences and words."""
    sections = markdown_sections(text) if is_markdown(mime_type) else plain_sections(text)
    return chunk_sections(document_id, text, sections, tokenize, chunk_tokens=chunk_tokens, overlap=overlap)
