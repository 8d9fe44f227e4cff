"""The retriever's text extraction: types from what the caller declares, the source's extension or the
bytes; Markdown and plain text as they are, HTML to text with Markdown headings, PDF through pypdf; and
the refusals (empty, binary, not UTF-8, unsupported, unreadable PDF) with messages that say why."""

from __future__ import annotations

import pytest

from flywheel.retriever.extract import (
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    ExtractionError,
    extract,
    html_to_text,
    media_type,
    tidy,
)
from tests.retriever_helpers import tiny_pdf


@pytest.mark.parametrize(("declared", "source", "content", "expected"), [
    ("text/markdown", "", b"x", MARKDOWN),
    ("text/plain; charset=utf-8", "", b"x", PLAIN),
    ("TEXT/HTML", "", b"x", HTML),
    ("text/x-markdown", "", b"x", MARKDOWN),
    ("", "docs/fees.md", b"x", MARKDOWN),
    ("", "docs/FEES.MARKDOWN", b"x", MARKDOWN),
    ("", "https://bank.example/help/cards.html?lang=en#top", b"x", HTML),
    ("", "scan.pdf", b"%PDF-1.4", PDF),
    ("", "notes.txt", b"x", PLAIN),
    ("", "", b"  %PDF-1.7 ...", PDF),
    ("", "", b"<!DOCTYPE html><html>", HTML),
    ("", "", b"just words", PLAIN),
    ("", "https://bank.example", b"<html><body>hi</body></html>", HTML),
])
def test_the_type_comes_from_the_declaration_the_extension_or_the_bytes(declared: str, source: str,
                                                                         content: bytes, expected: str) -> None:
    assert media_type(declared, source, content) == expected


def test_unsupported_types_are_named() -> None:
    with pytest.raises(ExtractionError, match=r"mime_type 'image/png' is not supported"):
        media_type("image/png", "", b"")
    with pytest.raises(ExtractionError, match=r"'\.docx' files is not supported"):
        media_type("", "report.docx", b"PK")


def test_markdown_and_plain_text_are_kept_as_they_are_tidied() -> None:
    text = b"\xef\xbb\xbf# Fees\r\n\r\n\r\n\r\nForeign fee: 2%.   \r\n"
    got = extract(text, "", "fees.md")
    assert got.text == "# Fees\n\nForeign fee: 2%." and got.mime_type == MARKDOWN and got.title == "Fees"
    plain = extract(b"# not a heading in plain text", "text/plain")
    assert plain.text == "# not a heading in plain text" and plain.title == ""
    assert extract("Grüße".encode("latin-1"), "text/plain; charset=latin-1").text == "Grüße"


def test_html_keeps_visible_text_and_headings_as_markdown() -> None:
    text, title = html_to_text(
        "<html><head><title>Cards &amp; fees</title><style>h1{}</style><script>var x = '<h1>no</h1>';</script>"
        "</head><body><nav>Menu</nav><h1>Lost <em>cards</em></h1><p>Block it&nbsp;now.</p><noscript>nojs</noscript>"
        "<h3>Abroad</h3><ul><li>Call us</li><li>Use the app</li></ul><pre>code  kept\n  as is</pre>"
        "<table><tr><th>fee</th><td>2%</td></tr></table></body></html>")
    assert title == "Cards & fees"
    lines = tidy(text).split("\n")
    assert "# Lost cards" in lines and "### Abroad" in lines and "- Call us" in lines and "- Use the app" in lines
    assert "Block it\xa0now." in lines or "Block it now." in lines
    assert "code  kept" in lines and "  as is" in lines and "fee | 2%" in lines
    assert "var x" not in text and "nojs" not in text and "h1{}" not in text


def test_pdf_text_comes_from_every_page() -> None:
    got = extract(tiny_pdf([["Chargebacks", "Refunds within ten days."], ["Second page"]], title="Disputes"),
                  "application/pdf")
    assert got.mime_type == PDF and got.title == "Disputes"
    assert "Chargebacks" in got.text and "Refunds within ten days." in got.text and "Second page" in got.text


@pytest.mark.parametrize(("content", "declared", "source", "message"), [
    (b"", "text/plain", "", "is empty"),
    (b"   \n\t\n", "", "", "has no text"),
    (b"<html><script>x()</script></html>", "text/html", "", "has no text"),
    (b"abc\x00def", "", "data.txt", "NUL bytes"),
    (b"\xff\xfe\xfd", "", "", "not valid UTF-8"),
    (b"hello", "text/plain; charset=klingon", "", "unknown charset"),
    (b"%PDF-1.4 garbage", "application/pdf", "", "not a readable PDF"),
    (b"hello", "application/pdf", "", "not a PDF"),
    (tiny_pdf([[]]), "application/pdf", "", "no extractable text"),
])
def test_refusals_say_what_is_wrong(content: bytes, declared: str, source: str, message: str) -> None:
    with pytest.raises(ExtractionError, match=message):
        extract(content, declared, source)
