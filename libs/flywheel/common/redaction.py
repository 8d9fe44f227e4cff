"""A small PII redactor for text that is about to be stored: card numbers (Luhn-valid), IBANs (mod-97
valid), e-mail addresses and phone numbers are replaced by placeholders ([CARD], [IBAN], [EMAIL], [PHONE]).

It is a floor, not a policy engine: the guard service owns PII policies in the generation path. This is
what a service applies on its own before it keeps text (the fine-tuner's instruction dataset), so raw PII
never reaches its tables even when an upstream redaction missed something. Checksums keep ordinary
numbers (amounts, dates, reference numbers) out of [CARD] and [IBAN]; phone numbers must start with
`+`, `00`, `0` or a parenthesised area code and have 8 to 15 digits, so amounts and years stay.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

CARD, IBAN, EMAIL, PHONE = "[CARD]", "[IBAN]", "[EMAIL]", "[PHONE]"

# 13-19 digits, optionally grouped by single spaces or dashes; not glued to other digits or letters.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# Country code, check digits, then 11-30 letters/digits, optionally in groups of four separated by spaces.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00|0|\(\d{1,5}\)\s?)\d[\d\s().-]{5,22}\d(?![\w])")


@dataclass
class Redacted:
    """The text with PII replaced, and how many of each kind were found."""

    text: str
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def redact(text: str) -> Redacted:
    """Replace card numbers, IBANs, e-mail addresses and phone numbers in `text`."""
    counts: Counter[str] = Counter()

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            counts["card"] += 1
            return CARD
        return match.group()

    def iban(match: re.Match[str]) -> str:
        if iban_valid(match.group()):
            counts["iban"] += 1
            return IBAN
        return match.group()

    def email(match: re.Match[str]) -> str:
        counts["email"] += 1
        return EMAIL

    def phone(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        if 8 <= len(digits) <= 15:
            counts["phone"] += 1
            return PHONE
        return match.group()

    out = _IBAN.sub(iban, text)  # first: an IBAN's digits could pass the Luhn check by chance
    out = _CARD.sub(card, out)
    out = _EMAIL.sub(email, out)
    out = _PHONE.sub(phone, out)
    return Redacted(out, counts)
