"""The bank's policy documents (the support assistant's knowledge) and a labelled retrieval set over them.

`documents/` holds Northwind Bank's policies: Markdown files, one HTML page (`fees.html`) and one
plain-text notice, so ingestion sees several formats. `documents/questions.yaml` labels customer
questions with the document that answers them and `evidence`: exact passages from that document,
each of which answers the question on its own. A retrieved chunk is relevant to a question when it
comes from the question's document and contains one of its evidence strings (whitespace-insensitive),
so the labels survive any change of chunking. The same file lists `refusals`: prompts the assistant
must refuse, each with the policy section that says so, and `unsupported`: questions from outside banking that no
document answers (the assistant's grounding rule answers them with its refusal).

A document's id is its file name without the extension (`fees.html` -> `fees`); everything here that
takes a document accepts either form, or a path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from flywheel.common.clients.retriever import RetrieverClient
    from flywheel.proto.retriever.v1.retriever_service_pb2 import IngestResult

DOCUMENTS_DIR = Path(__file__).parent / "documents"
QUESTIONS_FILE = DOCUMENTS_DIR / "questions.yaml"
# The retrieval collection the documents go into, and the tenant that owns it.
COLLECTION = "bank-policies"
TENANT = "northwind"
MIME_TYPES = {".md": "text/markdown", ".html": "text/html", ".txt": "text/plain"}

# One retrieved chunk: (the document it comes from: id, file name or path; its text).
RetrievedChunk = tuple[str, str]


@dataclass(frozen=True)
class PolicyDocument:
    document_id: str
    path: Path
    mime_type: str
    title: str
    # The text the retriever indexes: Markdown and plain text as written, HTML as its visible text.
    text: str


@dataclass(frozen=True)
class LabelledQuestion:
    id: str
    question: str
    # The file name of the document that answers it (e.g. `fees.html`).
    document: str
    # Exact passages of that document, each of which answers the question.
    evidence: tuple[str, ...]
    # What the question exercises: table, keyword (full-text helps), paraphrase (vectors help) or fact.
    kind: str = "fact"

    @property
    def document_id(self) -> str:
        return document_id(self.document)


@dataclass(frozen=True)
class Refusal:
    """A prompt the assistant must refuse, and the policy section that says so."""

    id: str
    prompt: str
    category: str
    document: str
    section: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class UnsupportedQuestion:
    """A question no document answers (from outside banking)."""

    id: str
    question: str


def document_id(name: str | Path) -> str:
    """`fees.html`, `documents/fees.html` and `fees` all name the document `fees`."""
    path = Path(name)
    return path.stem if path.suffix in MIME_TYPES else path.name


def document_paths(directory: Path = DOCUMENTS_DIR) -> list[Path]:
    """The policy documents (not the labels), sorted by file name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MIME_TYPES)


def extract_text(path: Path) -> str:
    """The text to index: Markdown and plain text as they are, HTML as its visible text."""
    raw = path.read_text(encoding="utf-8")
    return html_to_text(raw) if path.suffix == ".html" else raw


def load_documents(directory: Path = DOCUMENTS_DIR) -> list[PolicyDocument]:
    documents = []
    for path in document_paths(directory):
        text = extract_text(path)
        documents.append(PolicyDocument(document_id(path), path, MIME_TYPES[path.suffix], _title(path, text), text))
    return documents


def _title(path: Path, text: str) -> str:
    if path.suffix == ".html":
        match = re.search(r"<title>(.*?)</title>", path.read_text(encoding="utf-8"), re.S)
        if match:
            return normalize(match.group(1))
    first = next((line for line in text.splitlines() if line.strip()), path.stem)
    return first.lstrip("#").strip()


class _VisibleText(HTMLParser):
    """Visible text of a page: no head, script or style; one line per block; headings as Markdown headings
    (so a Markdown-aware chunker splits HTML at its sections too); table cells separated by ` | `."""

    # Blocks separated by a blank line, and elements that start a new line.
    _PARAGRAPHS = {"p", "table", "caption", "ul", "ol", "nav", "main", "footer", "header", "section",
                   "article", "blockquote", "pre"}
    _LINES = {"div", "li", "tr", "br", "dt", "dd"}
    _HIDDEN = {"head", "script", "style", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in self._LINES:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            # Whitespace between tags is layout, not text.
            self.parts.append(data if data.strip() else " ")


def html_to_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip().rstrip("|").rstrip()
             for line in "".join(parser.parts).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip() + "\n"


def normalize(text: str) -> str:
    """Whitespace-insensitive form used to match evidence: runs of whitespace become one space."""
    return " ".join(text.split())


def word_count(text: str) -> int:
    return len(text.split())


def _evidence(raw: object, where: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(e, str) and e.strip() for e in items):
        raise ValueError(f"{where}: evidence must be a non-empty string or list of strings")
    return tuple(items)


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with `questions` and `refusals`")
    return data


def load_questions(path: Path = QUESTIONS_FILE) -> list[LabelledQuestion]:
    questions = []
    for item in _load(path).get("questions") or []:
        where = f"{path.name}: question {item.get('id')!r}"
        questions.append(LabelledQuestion(
            id=str(item["id"]), question=item["question"], document=item["document"],
            evidence=_evidence(item.get("evidence"), where), kind=item.get("kind", "fact"),
        ))
    return questions


def load_refusals(path: Path = QUESTIONS_FILE) -> list[Refusal]:
    refusals = []
    for item in _load(path).get("refusals") or []:
        where = f"{path.name}: refusal {item.get('id')!r}"
        refusals.append(Refusal(
            id=str(item["id"]), prompt=item["prompt"], category=item["category"], document=item["document"],
            section=item["section"], evidence=_evidence(item.get("evidence"), where),
        ))
    return refusals


def load_unsupported(path: Path = QUESTIONS_FILE) -> list[UnsupportedQuestion]:
    out = []
    for item in _load(path).get("unsupported") or []:
        if not isinstance(item.get("question"), str) or not item["question"].strip():
            raise ValueError(f"{path.name}: unsupported question {item.get('id')!r} has no question")
        out.append(UnsupportedQuestion(id=str(item["id"]), question=item["question"]))
    return out


def is_relevant(question: LabelledQuestion, chunk_document: str, chunk_text: str) -> bool:
    """Whether a retrieved chunk answers the question: it comes from the question's document (id, file
    name or path) and contains one of the evidence strings, ignoring differences in whitespace."""
    if document_id(chunk_document) != question.document_id:
        return False
    text = normalize(chunk_text)
    return any(normalize(e) in text for e in question.evidence)


def first_relevant_rank(question: LabelledQuestion, ranked: Sequence[RetrievedChunk]) -> int | None:
    """1-based rank of the first relevant chunk, or None."""
    for rank, (document, text) in enumerate(ranked, start=1):
        if is_relevant(question, document, text):
            return rank
    return None


def recall_at_k(
    questions: Sequence[LabelledQuestion], results: Mapping[str, Sequence[RetrievedChunk]], k: int,
) -> float:
    """Share of questions with a relevant chunk among their top k results (`results` maps a question id
    to its chunks, best first; a question without results counts as a miss). Evidence strings are
    alternatives, so one relevant chunk answers a question: this is recall with one relevant item."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if not questions:
        return 0.0
    hits = sum(first_relevant_rank(q, list(results.get(q.id, ()))[:k]) is not None for q in questions)
    return hits / len(questions)


def mean_reciprocal_rank(
    questions: Sequence[LabelledQuestion], results: Mapping[str, Sequence[RetrievedChunk]], k: int | None = None,
) -> float:
    """Mean over questions of 1 / rank of the first relevant chunk (0 when none is in the top k, or in
    all results when k is None)."""
    if k is not None and k < 1:
        raise ValueError("k must be at least 1")
    if not questions:
        return 0.0
    total = 0.0
    for q in questions:
        ranked = list(results.get(q.id, ()))
        rank = first_relevant_rank(q, ranked if k is None else ranked[:k])
        total += 0.0 if rank is None else 1.0 / rank
    return total / len(questions)


async def ingest_policies(retriever: RetrieverClient, directory: Path = DOCUMENTS_DIR) -> list[IngestResult]:
    """Create the bank's collection (idempotent) and send every policy document to the retriever, raw: it
    extracts the text itself. Unchanged documents come back UNCHANGED, so a restarted demo re-sends for
    free. Returns one result per document, in file-name order."""
    from flywheel.common.clients.retriever import file_input

    await retriever.create_collection(COLLECTION, tenant=TENANT,
                                      description="Northwind Bank's policies (the support assistant's knowledge)")
    inputs = [file_input(path, source=f"payments_demo/documents/{path.name}", document_id=document_id(path),
                         doc_type="policy")
              for path in document_paths(directory)]
    return await retriever.ingest(COLLECTION, inputs, tenant=TENANT)
