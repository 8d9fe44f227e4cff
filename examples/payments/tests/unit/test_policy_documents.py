"""The bank's policy documents and their labelled retrieval set (payments_demo.rag): every label points at
text that exists exactly once, and the retrieval metrics compute what they claim."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from payments_demo import rag
from payments_demo.rag import LabelledQuestion

DOCUMENTS = rag.load_documents()
TEXTS = {d.path.name: rag.normalize(d.text) for d in DOCUMENTS}
QUESTIONS = rag.load_questions()
REFUSALS = rag.load_refusals()


def _words(passage: str) -> int:
    """Words of a passage, not counting table separators."""
    return sum(1 for token in passage.split() if re.search(r"\w", token))


def _occurrences(document: str, passage: str) -> int:
    text, needle = TEXTS[document], rag.normalize(passage)
    return sum(1 for i in range(len(text)) if text.startswith(needle, i))


def test_documents_cover_three_formats_and_are_utf8() -> None:
    paths = rag.document_paths()
    assert {p.suffix for p in paths} == {".md", ".html", ".txt"}
    assert [p.suffix for p in paths].count(".html") == 1 and [p.suffix for p in paths].count(".txt") == 1
    assert 7 <= len(paths) <= 10
    for path in [*paths, rag.QUESTIONS_FILE]:
        path.read_bytes().decode("utf-8")  # raises on anything else


def test_document_sizes() -> None:
    counts = {d.path.name: rag.word_count(d.text) for d in DOCUMENTS}
    assert sum(counts.values()) >= 25_000, counts
    for name, count in counts.items():
        assert 2_500 <= count <= 5_000, (name, count)


def test_markdown_documents_have_a_heading_hierarchy() -> None:
    for d in DOCUMENTS:
        if d.mime_type == "text/markdown":
            lines = d.text.splitlines()
            assert lines[0].startswith("# "), d.path.name
            assert any(line.startswith("## ") for line in lines) and any(line.startswith("### ") for line in lines)
            assert any(line.startswith("|---") for line in lines), f"{d.path.name} has no table"


def test_document_ids_and_titles() -> None:
    ids = [d.document_id for d in DOCUMENTS]
    assert len(set(ids)) == len(ids)
    by_id = {d.document_id: d for d in DOCUMENTS}
    assert by_id["fees"].mime_type == "text/html" and by_id["fees"].title == "Northwind Bank Fee Schedule"
    assert by_id["cards"].title == "Northwind Bank Card Guide"
    assert rag.COLLECTION == "bank-policies" and rag.TENANT == "northwind"


def test_html_is_indexed_as_its_visible_text() -> None:
    text = next(d.text for d in DOCUMENTS if d.path.suffix == ".html")
    assert "<" not in text and "nwbPage" not in text and "border-collapse" not in text
    assert "## 4. Foreign transaction fees" in text
    assert "Everyday Debit | 3% | FX-3" in text


def test_html_to_text() -> None:
    html = """<html><head><title>T</title><style>p { color: red }</style></head><body>
      <script>var hidden = 1;</script>
      <h2>Fees &amp; charges</h2>
      <p>First line
         continues here.</p>
      <table><tr><th>Code</th><th>Fee</th></tr>
             <tr><td>FX-3</td><td>3%</td></tr></table>
      <ul><li>one</li><li>two</li></ul>
    </body></html>"""
    assert rag.html_to_text(html) == (
        "## Fees & charges\n\nFirst line\ncontinues here.\n\nCode | Fee\nFX-3 | 3%\n\none\ntwo\n"
    )


def test_question_and_refusal_ids_are_unique() -> None:
    ids = [q.id for q in QUESTIONS] + [r.id for r in REFUSALS] + [u.id for u in rag.load_unsupported()]
    assert not [i for i, n in Counter(ids).items() if n > 1]


def test_unsupported_questions_are_not_labelled_questions() -> None:
    unsupported = rag.load_unsupported()
    assert len(unsupported) >= 10
    asked = {rag.normalize(q.question) for q in QUESTIONS} | {rag.normalize(r.prompt) for r in REFUSALS}
    assert not {rag.normalize(u.question) for u in unsupported} & asked


def test_questions_cover_every_document_and_kind() -> None:
    assert len(QUESTIONS) >= 80
    per_document = Counter(q.document for q in QUESTIONS)
    assert set(per_document) == set(TEXTS), set(TEXTS) ^ set(per_document)
    assert min(per_document.values()) >= 5, per_document
    kinds = Counter(q.kind for q in QUESTIONS)
    assert set(kinds) <= {"table", "keyword", "paraphrase", "fact"}
    for kind in ("table", "keyword", "paraphrase"):
        assert kinds[kind] >= 10, kinds


@pytest.mark.parametrize("question", QUESTIONS, ids=lambda q: q.id)
def test_every_evidence_occurs_exactly_once_in_its_document(question: LabelledQuestion) -> None:
    assert question.document in TEXTS
    for passage in question.evidence:
        assert 5 <= _words(passage) <= 25, passage
        assert _occurrences(question.document, passage) == 1, passage
        # Customer phrasing: the question never quotes its answer.
        assert rag.normalize(passage).lower() not in rag.normalize(question.question).lower()


def test_refusals_cite_a_section_that_exists() -> None:
    assert len(REFUSALS) >= 15
    categories = Counter(r.category for r in REFUSALS)
    assert categories["investment_advice"] >= 3 and categories["other_customer_data"] >= 3
    for refusal in REFUSALS:
        assert rag.normalize(refusal.section) in TEXTS[refusal.document], refusal.id
        for passage in refusal.evidence:
            assert 5 <= _words(passage) <= 25, passage
            assert _occurrences(refusal.document, passage) == 1, (refusal.id, passage)


def test_each_evidence_string_is_found_in_a_chunk_of_its_own_document() -> None:
    """The labels are usable: splitting every document into its paragraphs finds each question relevant."""
    hits = 0
    for q in QUESTIONS:
        document = next(d for d in DOCUMENTS if d.path.name == q.document)
        paragraphs = [(document.document_id, p) for p in re.split(r"\n\s*\n", document.text)]
        hits += rag.first_relevant_rank(q, paragraphs) is not None
    assert hits == len(QUESTIONS)


# --- relevance and metrics on a hand-made example ---

Q1 = LabelledQuestion("q1", "How much is the fee abroad?", "fees.html", ("foreign transaction fee of 3%",))
Q2 = LabelledQuestion("q2", "Lost card?", "cards.md", ("call 555-0199 at any time", "lock it first"))
Q3 = LabelledQuestion("q3", "Never answered", "limits.md", ("resets at midnight ET",))


def test_document_ids() -> None:
    for name in ("fees.html", "fees", "/x/documents/fees.html"):
        assert rag.document_id(name) == "fees"
    assert rag.document_id("northwind-assist-notice.txt") == "northwind-assist-notice"
    assert Q1.document_id == "fees"


def test_is_relevant() -> None:
    assert rag.is_relevant(Q1, "fees", "We add a foreign transaction\n   fee of 3%, which is $1.96.")
    assert rag.is_relevant(Q1, "fees.html", "a foreign transaction fee of 3% applies")
    assert rag.is_relevant(Q1, "documents/fees.html", "a foreign transaction fee of 3% applies")
    assert not rag.is_relevant(Q1, "cards", "a foreign transaction fee of 3% applies")  # wrong document
    assert not rag.is_relevant(Q1, "fees", "a foreign transaction fee applies")  # no evidence
    assert rag.is_relevant(Q2, "cards.md", "If unsure, lock it first in Card Controls.")  # any evidence string


def test_recall_and_mrr_on_a_known_ranking() -> None:
    results = {
        # relevant at rank 2
        "q1": [("cards", "foreign transaction fee of 3%"), ("fees", "... foreign transaction fee of 3% ..."),
               ("fees", "foreign transaction fee of 3% again")],
        # relevant at rank 3
        "q2": [("cards", "nothing here"), ("fees", "call 555-0199 at any time"),
               ("cards", "call 555-0199 at any time")],
        # never relevant
        "q3": [("limits", "limits reset every day")],
    }
    questions = [Q1, Q2, Q3]
    assert rag.recall_at_k(questions, results, 1) == 0.0
    assert rag.recall_at_k(questions, results, 2) == pytest.approx(1 / 3)
    assert rag.recall_at_k(questions, results, 3) == pytest.approx(2 / 3)
    assert rag.recall_at_k(questions, results, 10) == pytest.approx(2 / 3)
    assert rag.mean_reciprocal_rank(questions, results) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert rag.mean_reciprocal_rank(questions, results, k=2) == pytest.approx((1 / 2) / 3)
    # A question without results is a miss; an empty question set scores 0.
    assert rag.recall_at_k([Q1, Q3], {"q1": results["q1"]}, 5) == pytest.approx(1 / 2)
    assert rag.mean_reciprocal_rank([], results) == 0.0
    with pytest.raises(ValueError):
        rag.recall_at_k(questions, results, 0)


def test_loaders_reject_questions_without_evidence(tmp_path) -> None:
    bad = tmp_path / "q.yaml"
    bad.write_text("questions:\n  - {id: x, question: q, document: cards.md, evidence: []}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="evidence"):
        rag.load_questions(bad)
