"""The embedder's chunker: Markdown headings, token windows with overlap, boundaries, offsets, stable ids."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from flywheel.embedder.chunking import (
    chunk_document,
    chunk_id,
    is_markdown,
    markdown_sections,
    plain_sections,
)

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[tuple[int, int]]:
    """A tokenizer stand-in: words and single punctuation marks."""
    return [m.span() for m in WORD.finditer(text)]


POLICY = """Intro line before any heading.

# Fees

## Foreign transactions

A fee of 2% applies to card payments in a foreign currency. It is shown on the statement.

## Cash withdrawals

Withdrawals abroad cost 3 EUR each.

```
# not a heading: code
```

# Disputes
### Chargebacks ###

Open a dispute within 120 days.
"""


def test_markdown_sections_follow_the_heading_path() -> None:
    sections = markdown_sections(POLICY)
    assert [s.path for s in sections] == [
        "", "Fees > Foreign transactions", "Fees > Cash withdrawals", "Disputes > Chargebacks"]
    # "# Fees" and "# Disputes" hold only their heading: no section of their own.
    assert POLICY[sections[1].start:].startswith("## Foreign transactions")
    assert "# not a heading: code" in POLICY[sections[2].start:sections[2].end]  # fenced code is no heading
    assert POLICY[sections[3].start:sections[3].end].startswith("### Chargebacks ###")
    assert sections[-1].end == len(POLICY)


def test_markdown_chunks_carry_their_section_and_never_cross_one() -> None:
    chunks = chunk_document("doc-1", POLICY, "text/markdown", words, chunk_tokens=12, overlap=3)
    sections = markdown_sections(POLICY)
    for chunk in chunks:
        assert POLICY[chunk.start:chunk.end] == chunk.text
        inside = [s for s in sections if s.start <= chunk.start and chunk.end <= s.end]
        assert len(inside) == 1 and inside[0].path == chunk.section
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[1].section == "Fees > Foreign transactions"
    assert chunks[1].text.startswith("## Foreign transactions")  # the heading is part of the text


def test_plain_text_is_one_section_and_markdown_only_by_mime_type() -> None:
    assert is_markdown("text/markdown; charset=utf-8") and is_markdown("text/x-markdown")
    assert not is_markdown("text/plain") and not is_markdown("text/html") and not is_markdown("")
    chunks = chunk_document("doc", POLICY, "text/plain", words, chunk_tokens=500, overlap=0)
    assert len(chunks) == 1 and chunks[0].section == "" and chunks[0].text == POLICY.strip()
    assert plain_sections("  \n\t ") == [] and chunk_document("d", " \n ", "text/plain", words,
                                                                 chunk_tokens=10, overlap=0) == []


def long_text(sentences: int = 60) -> str:
    paragraphs = []
    for p in range(0, sentences, 6):
        paragraphs.append(" ".join(f"Sentence {i} says that the card fee is {i} percent of the amount."
                                   for i in range(p, min(p + 6, sentences))))
    return "\n\n".join(paragraphs)


@pytest.mark.parametrize("size,overlap", [(20, 0), (40, 8), (64, 16), (100, 32)])
def test_windows_respect_the_token_limit_cover_everything_and_overlap(size: int, overlap: int) -> None:
    text = long_text()
    chunks = chunk_document("doc", text, "text/plain", words, chunk_tokens=size, overlap=overlap)
    assert len(chunks) > 2
    tokens = words(text)
    covered: set[int] = set()
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        inside = [i for i, (s, e) in enumerate(tokens) if chunk.start <= s and e <= chunk.end]
        assert len(inside) == chunk.token_count <= size
        assert chunk.token_count >= min(size // 2, len(tokens)) or chunk is chunks[-1]
        covered.update(inside)
    assert covered == set(range(len(tokens)))
    for a, b in itertools.pairwise(chunks):
        shared = len(words(text[b.start:a.end])) if b.start < a.end else 0
        assert shared <= overlap
        if overlap:
            assert shared > 0, "consecutive chunks of one section overlap"
        assert b.start > a.start and b.end > a.end


def test_cuts_prefer_paragraphs_then_sentences_then_words() -> None:
    text = long_text()
    for chunk in chunk_document("doc", text, "text/plain", words, chunk_tokens=40, overlap=0):
        assert chunk.text.endswith("."), chunk.text  # every window found a sentence end in its second half
    paragraph = chunk_document("doc", "One two three four five six.\n\nSeven eight nine ten. Eleven twelve",
                               "text/plain", words, chunk_tokens=12, overlap=0)
    assert paragraph[0].text == "One two three four five six."
    no_sentences = " ".join(f"w{i}" for i in range(50))
    for chunk in chunk_document("doc", no_sentences, "text/plain", words, chunk_tokens=16, overlap=4):
        assert chunk.text.startswith("w") and re.fullmatch(r"(w\d+ ?)+", chunk.text)


def test_overlap_starts_at_a_sentence_when_there_is_one() -> None:
    text = long_text()
    chunks = chunk_document("doc", text, "text/plain", words, chunk_tokens=40, overlap=16)
    starts = [c for c in chunks[1:] if text[c.start - 2:c.start] == ". "]
    assert len(starts) >= len(chunks) // 2, "most overlaps begin at a sentence start"


def test_a_text_without_boundaries_is_cut_inside_words_within_the_limit() -> None:
    def letters(text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(len(text))]
    chunks = chunk_document("doc", "x" * 95, "text/plain", letters, chunk_tokens=20, overlap=5)
    assert all(c.token_count <= 20 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == 95


def test_chunk_ids_are_stable_and_depend_on_document_index_and_text() -> None:
    text = long_text(30)
    first = chunk_document("doc-7", text, "text/plain", words, chunk_tokens=30, overlap=6)
    again = chunk_document("doc-7", text, "text/plain", words, chunk_tokens=30, overlap=6)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    assert len({c.chunk_id for c in first}) == len(first)
    other = chunk_document("doc-8", text, "text/plain", words, chunk_tokens=30, overlap=6)
    assert not {c.chunk_id for c in first} & {c.chunk_id for c in other}
    edited = text.replace("Sentence 29 says", "Sentence 29 now says")
    changed = chunk_document("doc-7", edited, "text/plain", words, chunk_tokens=30, overlap=6)
    assert changed[0].chunk_id == first[0].chunk_id  # an edit at the end keeps the ids of earlier chunks
    assert changed[-1].chunk_id != first[-1].chunk_id
    assert chunk_id("a", 1, "bc") != chunk_id("a", 1, "b" + "c ") and chunk_id("ab", 1, "c") != chunk_id("a", 1, "bc")


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        chunk_document("d", "text", "text/plain", words, chunk_tokens=0, overlap=0)
    with pytest.raises(ValueError):
        chunk_document("d", "text", "text/plain", words, chunk_tokens=10, overlap=6)


def test_with_a_real_wordpiece_tokenizer_chunks_fit_the_model(tmp_path: Path) -> None:
    """With the tiny model's tokenizer: every chunk, tokenized again on its own, fits the window."""
    from flywheel.embedder.model import load_model_dir
    from flywheel.embedder.testing import build_tiny_model

    model = load_model_dir(build_tiny_model(tmp_path / "m", max_seq_length=64), "tiny", 1)
    text = POLICY + "\n" + long_text(20)
    size = model.max_content_tokens
    chunks = chunk_document("doc", text, "text/markdown", model.token_spans, chunk_tokens=size, overlap=8)
    assert len(chunks) > 5
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert chunk.token_count <= size
        assert model.count_tokens([chunk.text])[0] <= model.max_seq_length  # never truncated when embedded
