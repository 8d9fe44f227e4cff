"""Text from the files users send: Markdown and plain text as they are, HTML through the standard
library's parser (scripts and styles dropped, headings kept as Markdown `#` lines so the embedder's
heading-aware chunking works on them too), PDF through pypdf. Pure functions: no I/O, no transport.

Every failure is an `ExtractionError` whose message says what is wrong with the document; the caller
names the document."""

from __future__ import annotations

import io
import logging
import posixpath
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

MARKDOWN, PLAIN, HTML, PDF = "text/markdown", "text/plain", "text/html", "application/pdf"
SUPPORTED = (MARKDOWN, PLAIN, HTML, PDF)
# Other names of the supported types that clients send.
ALIASES = {"text/x-markdown": MARKDOWN, "text/md": MARKDOWN, "application/xhtml+xml": HTML, "application/x-pdf": PDF}
EXTENSIONS = {".md": MARKDOWN, ".markdown": MARKDOWN, ".txt": PLAIN, ".text": PLAIN, ".html": HTML, ".htm": HTML,
              ".pdf": PDF}

_BLANK_RUNS = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t\f\v\r]+")
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


class ExtractionError(ValueError):
    """The document cannot become text; the message says why."""


@dataclass(frozen=True)
class Extracted:
    text: str
    mime_type: str
    # A title found in the document (Markdown's first heading, HTML's <title>, PDF metadata), or "".
    title: str = ""


def media_type(declared: str, source: str, content: bytes) -> str:
    """The supported type of a document: the declared one (parameters dropped), else from the source's
    extension, else sniffed from the bytes (PDF, HTML, else plain text)."""
    if declared:
        base = declared.split(";", 1)[0].strip().lower()
        base = ALIASES.get(base, base)
        if base not in SUPPORTED:
            raise ExtractionError(f"mime_type {declared!r} is not supported (supported: {', '.join(SUPPORTED)})")
        return base
    if source:
        path = urlsplit(source).path if "://" in source else source
        ext = posixpath.splitext(posixpath.basename(path.replace("\\", "/").lower()))[1]
        if ext in EXTENSIONS:
            return EXTENSIONS[ext]
        if ext:
            raise ExtractionError(f"the type of {ext!r} files is not supported (supported extensions: "
                                  f"{', '.join(sorted(EXTENSIONS))}); or set mime_type")
    head = content[:1024].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return PDF
    if head.startswith((b"<!doctype html", b"<html")):
        return HTML
    return PLAIN


def charset(declared: str) -> str:
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", declared or "")
    return match.group(1) if match else "utf-8"


def decode_text(content: bytes, encoding: str = "utf-8") -> str:
    """Bytes of a text file as str: NUL bytes or bytes that are not valid in `encoding` mean it is not text."""
    if b"\x00" in content:
        raise ExtractionError("contains NUL bytes: it is binary, not text (send PDFs as application/pdf)")
    try:
        text = content.decode(encoding)
    except LookupError:
        raise ExtractionError(f"unknown charset {encoding!r}") from None
    except UnicodeDecodeError as exc:
        raise ExtractionError(f"is not valid {encoding.upper()} text (byte {exc.start}): binary or another encoding "
                              "(declare it: text/plain; charset=...)") from None
    return text.removeprefix("\ufeff")


def tidy(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no NUL characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def markdown_title(text: str) -> str:
    match = _MD_HEADING.search(text)
    return match.group(1).strip() if match else ""


class _HtmlText(HTMLParser):
    """Collects visible text: headings as `#` lines, list items as `- ` lines, block elements as paragraphs."""

    # Not content: code, styles, embedded objects and navigation menus.
    SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "nav"}
    BLOCK = {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "blockquote", "ul", "ol",
             "dl", "dt", "dd", "table", "thead", "tbody", "form", "fieldset", "figure", "figcaption", "address",
             "hr", "details", "summary"}
    HEADINGS = {f"h{i}": i for i in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.skipping: list[str] = []
        self.pre = 0
        self.title_parts: list[str] | None = None
        self.title = ""
        self.heading = 0

    def _flush(self, blank: bool = False) -> None:
        text = "".join(self.line)
        if not self.pre:
            text = _SPACES.sub(" ", text.replace("\n", " ")).strip()
        if text:
            prefix = "#" * self.heading + " " if self.heading and not text.startswith("#") else ""
            self.lines.append(prefix + text)
        self.line = []
        if blank and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping:
            if tag in self.SKIP:
                self.skipping.append(tag)
            return
        if tag == "title":
            self.title_parts = []
            return
        if tag in self.SKIP:
            self.skipping.append(tag)
        elif tag in self.HEADINGS:
            self._flush(blank=True)
            self.heading = self.HEADINGS[tag]
        elif tag == "li":
            self._flush()
            self.line.append("- ")
        elif tag in ("br", "tr"):  # a table row is a line; the table is the block
            self._flush()
        elif tag == "pre":
            self._flush(blank=True)
            self.pre += 1
        elif tag in ("td", "th"):
            if self.line:
                self.line.append(" | ")
        elif tag in self.BLOCK:
            self._flush(blank=True)

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if tag == "title" and self.title_parts is not None:
            self.title = _SPACES.sub(" ", "".join(self.title_parts)).strip()
            self.title_parts = None
        elif tag in self.HEADINGS:
            self._flush(blank=True)
            self.heading = 0
        elif tag == "pre":
            self._flush(blank=True)
            self.pre = max(0, self.pre - 1)
        elif tag in ("li", "tr"):
            self._flush()
        elif tag in self.BLOCK:
            self._flush(blank=True)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.title_parts is not None:
            self.title_parts.append(data)
            return
        if self.pre:
            parts = data.split("\n")
            for i, part in enumerate(parts):
                if i:
                    self._flush()
                self.line.append(part)
        else:
            self.line.append(data)

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines)


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML page: visible text, headings as Markdown `#` lines."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = parser.text()
    return text, parser.title or markdown_title(text)


def pdf_to_text(content: bytes) -> tuple[str, str]:
    """(text, title) of a PDF: the text of its pages, a blank line between pages."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns about every odd object of real-world files
    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise ExtractionError("is an encrypted PDF (a password is needed to read it)")
            except ExtractionError:
                raise
            except Exception as exc:
                raise ExtractionError(f"is an encrypted PDF that cannot be read: {exc}") from None
        pages = [page.extract_text() or "" for page in reader.pages]
        title = ""
        try:
            title = str((reader.metadata or {}).get("/Title") or "").strip()
        except Exception:  # metadata of broken files: not worth failing for
            title = ""
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise ExtractionError(f"is not a readable PDF: {exc}") from None
    return "\n\n".join(p.strip() for p in pages), title


def extract(content: bytes, declared_type: str = "", source: str = "") -> Extracted:
    """The text of a document, by its type (see `media_type`)."""
    kind = media_type(declared_type, source, content)
    if not content:
        raise ExtractionError("is empty")
    title = ""
    if kind == PDF:
        if not content.lstrip()[:5] == b"%PDF-":
            raise ExtractionError("is not a PDF (it does not start with %PDF-)")
        raw, title = pdf_to_text(content)
        text = tidy(raw)
        if not text:
            raise ExtractionError("has no extractable text (a scanned PDF needs OCR first)")
        return Extracted(text, kind, title)
    decoded = decode_text(content, charset(declared_type))
    if kind == HTML:
        raw, title = html_to_text(decoded)
        text = tidy(raw)
    else:
        text = tidy(decoded)
        title = markdown_title(text) if kind == MARKDOWN else ""
    if not text:
        raise ExtractionError("has no text (it is empty or only whitespace/markup)")
    return Extracted(text, kind, title)
