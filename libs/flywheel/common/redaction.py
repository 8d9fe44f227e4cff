"""Redaction of text a service is about to store: every PII kind `flywheel.common.pii` recognizes (card
numbers by Luhn, IBANs by mod-97, US SSNs, UK NI numbers, e-mails, phones, names) is replaced by its
placeholder ([CARD_NUMBER], [IBAN], ...), the same rules and placeholders the guard applies.

It is a floor, not a policy: the guard owns per-application PII policies in the generation path. A service
applies this on its own before it keeps text (the fine-tuner's instruction dataset), so raw PII never
reaches its tables even when an upstream redaction missed something.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flywheel.common import pii


@dataclass
class Redacted:
    """The text with PII replaced, and how many of each kind were found."""

    text: str
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def redact(text: str) -> Redacted:
    """Replace every PII span of `text` by its kind's placeholder (NUL characters dropped: see `pii.redact`)."""
    spans = pii.find_pii(text)
    return Redacted(pii.redact(text, spans), Counter(span.kind for span in spans))
