"""The shared redactor (flywheel.common.redaction over flywheel.common.pii, the guard's recognizers):
checksummed card numbers and IBANs, e-mail addresses, phone numbers and names are replaced; ordinary numbers
(amounts, dates, days, references) stay."""

from __future__ import annotations

import pytest

from flywheel.common.pii import iban_valid, luhn_valid
from flywheel.common.redaction import redact


@pytest.mark.parametrize(("text", "expected", "counts"), [
    ("My card 4111 1111 1111 1111 was charged.", "My card [CARD_NUMBER] was charged.", {"card_number": 1}),
    ("card 5555-5555-5555-4444, thanks", "card [CARD_NUMBER], thanks", {"card_number": 1}),
    ("pay to DE89 3704 0044 0532 0130 00 today", "pay to [IBAN] today", {"iban": 1}),
    ("GB82WEST12345698765432", "[IBAN]", {"iban": 1}),
    ("write to jane.doe+bank@example.co.uk.", "write to [EMAIL].", {"email": 1}),
    ("call +44 20 7946 0958 or 030 1234 5678", "call [PHONE] or [PHONE]", {"phone": 2}),
    ("call (555) 123-4567 now", "call [PHONE] now", {"phone": 1}),
    ("My name is Sarah Jones, SSN 123-45-6789", "My name is [NAME], SSN [US_SSN]", {"name": 1, "us_ssn": 1}),
])
def test_pii_is_replaced(text: str, expected: str, counts: dict[str, int]) -> None:
    result = redact(text)
    assert result.text == expected
    assert dict(result.counts) == counts and result.total == sum(counts.values())


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails the Luhn check",
    "GB00WEST12345698765432 fails mod 97",
    "dispute within 120 days; the fee is 5.00 EUR; reference 12345678",
    "statement of 2026-01-15 12:30, 1000000 customers, year 2025",
    "an @ sign alone, or user@localhost",
])
def test_ordinary_text_stays(text: str) -> None:
    result = redact(text)
    assert result.text == text and result.total == 0


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE00 3704 0044 0532 0130 00")
