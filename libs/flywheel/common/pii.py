"""PII recognizers: patterns plus validation where the identifier has a checksum or fixed rules.

- card_number: 13-19 digits (spaces or dashes between groups) passing the Luhn check.
- iban: country code, 2 check digits, 11-30 letters/digits (spaces allowed every 4), mod-97 == 1.
- us_ssn: AAA-GG-SSSS (dashes or spaces), area not 000/666/9xx, group not 00, serial not 0000.
- uk_nino: two prefix letters from the allowed set (not D F I Q U V; second not O; not BG GB KN NK
  NT TN ZZ), six digits, suffix A-D.
- email: local@domain.tld.
- phone: +country or national numbers of 10-15 digits in the usual groupings, or "(555) 123-4567".
- name: a first name from the shipped list (pii_first_names.txt next to this module) followed by a capitalised word,
  or a capitalised word after a cue ("my name is", "Mr", "Mrs", "Ms", "Dr", "this is"). What it
  catches: people named the way a customer writes them in a sentence. What it misses: names not in
  the list without a cue, lowercase names, names alone on a line. A name-like company or street
  ("Jordan Street") can be a false positive.

Pure functions over text: no I/O beyond reading the name list once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIRST_NAMES = Path(__file__).parent / "pii_first_names.txt"

KINDS = ("card_number", "iban", "us_ssn", "uk_nino", "email", "phone", "name")
REPLACEMENTS = {kind: f"[{kind.upper()}]" for kind in KINDS}


@dataclass(frozen=True)
class PiiSpan:
    kind: str
    start: int
    end: int
    # The identifier without separators, lowercased (to compare what the user gave with what an answer says).
    normalized: str

    @property
    def replacement(self) -> str:
        return REPLACEMENTS[self.kind]


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Length of a valid IBAN per country (the countries a European or US bank meets most; others: 15-34).
IBAN_LENGTHS = {"AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
                "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
                "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
                "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26}


def iban_valid(iban: str) -> bool:
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_valid(ssn: str) -> bool:
    digits = re.sub(r"\D", "", ssn)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def nino_valid(nino: str) -> bool:
    value = re.sub(r"\s", "", nino).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{6}[A-D]", value):
        return False
    first, second = value[0], value[1]
    if first in "DFIQUV" or second in "DFIQUVO":
        return False
    return value[:2] not in NINO_BAD_PREFIXES


CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
SSN = re.compile(r"(?<![\d-])\d{3}[- ]\d{2}[- ]\d{4}(?![\d-])|(?<=\bssn )\d{9}\b|(?<=\bssn: )\d{9}\b", re.IGNORECASE)
NINO = re.compile(r"\b[A-Za-z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-Da-d]\b")
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958, +1 (555) 010-4477
    r"|\(\d{3}\) ?\d{3}[ .-]?\d{4}"  # (555) 010-4477
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-010-4477
    r"|0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}"  # 020 7946 0958, 07700 900123
    r")(?![\w-])")
NAME_CUE = re.compile(r"\b(?:my name is|my name's|i am called|i'm|i am|this is|signed|regards,|mr\.?|mrs\.?|ms\.?|"
                      r"miss|dr\.?)\s+([A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?)", re.IGNORECASE)
# "Sarah Jones here, ..." at the start of a message or sentence.
NAME_HERE = re.compile(r"(?:^|[.!?]\s+)([A-Z][a-z'-]+\s+(?:Mc|Mac|O')?[A-Z][a-z'-]+)\s+here\b")
# Capitalised words that make a pair an organisation or product, not a person.
ORG_WORDS = {"bank", "checking", "savings", "account", "card", "debit", "credit", "assist", "support", "team",
             "premier", "plus", "everyday", "classic", "voyager", "summit", "platinum", "rewards", "travel", "street",
             "road", "avenue", "branch", "services", "fund", "pay", "wallet", "saver", "isa"}
# A lookahead, so that pairs overlap ("I'm Sarah Jones": "I'm Sarah", then "Sarah Jones").
CAPITALISED_PAIR = re.compile(r"(?=\b([A-Z][a-z'-]+)\s+((?:Mc|Mac|O')?[A-Z][a-z'-]+)\b)")
# Capitalised words after a cue that are not names ("this is Urgent", "Ms Account").
NOT_NAMES = {"a", "an", "the", "my", "your", "about", "urgent", "regarding", "not", "just", "northwind", "bank",
             "card", "account", "it", "is", "what", "why", "how", "happening", "ridiculous", "unacceptable",
             "important", "fraud", "really", "so", "very", "still", "also", "only", "because", "there", "here",
             "correct", "right", "wrong", "true", "false", "new", "old", "ok", "okay", "fine", "great", "good"}


@functools.cache
def first_names() -> frozenset[str]:
    path = FIRST_NAMES
    return frozenset(line.strip().lower() for line in path.read_text().splitlines()
                     if line.strip() and not line.startswith("#"))


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _cards(text: str) -> Iterable[PiiSpan]:
    for m in CARD.finditer(text):
        digits = _digits(m.group())
        if luhn_valid(digits):
            yield PiiSpan("card_number", m.start(), m.end(), digits)


def _ibans(text: str) -> Iterable[PiiSpan]:
    for m in IBAN.finditer(text):
        raw = m.group().rstrip()
        # The pattern may run into the next word ("GB29 NWBK ... 26819 and"): shrink until valid.
        compact = raw.replace(" ", "")
        for cut in range(len(compact), 14, -1):
            if iban_valid(compact[:cut]):
                # Map the cut back onto the spaced text.
                seen, end = 0, m.start()
                for i, ch in enumerate(raw):
                    if ch != " ":
                        seen += 1
                    if seen == cut:
                        end = m.start() + i + 1
                        break
                yield PiiSpan("iban", m.start(), end, compact[:cut].upper())
                break


def _ssns(text: str) -> Iterable[PiiSpan]:
    for m in SSN.finditer(text):
        if ssn_valid(m.group()):
            yield PiiSpan("us_ssn", m.start(), m.end(), _digits(m.group()))


def _ninos(text: str) -> Iterable[PiiSpan]:
    for m in NINO.finditer(text):
        if nino_valid(m.group()):
            yield PiiSpan("uk_nino", m.start(), m.end(), re.sub(r"\s", "", m.group()).upper())


def _emails(text: str) -> Iterable[PiiSpan]:
    for m in EMAIL.finditer(text):
        yield PiiSpan("email", m.start(), m.end(), m.group().lower())


def _phones(text: str) -> Iterable[PiiSpan]:
    for m in PHONE.finditer(text):
        digits = _digits(m.group())
        if 10 <= len(digits) <= 15:
            yield PiiSpan("phone", m.start(), m.end(), digits[-10:])


def _names(text: str) -> Iterable[PiiSpan]:
    names = first_names()
    for m in NAME_CUE.finditer(text):
        words = m.group(1).split()
        if len(words) > 1 and not words[1][0].isupper():  # the cue is case-blind, names are not
            words = words[:1]
        while words and words[-1].lower() in NOT_NAMES:
            words.pop()
        if not words or words[0].lower() in NOT_NAMES or not words[0][0].isupper():
            continue
        start = m.start(1)
        end = start + len(" ".join(words)) if len(words) > 1 else start + len(words[0])
        # "this is X" counts for a listed first name, or a first and last name (else it is mostly not an
        # introduction: "this is urgent").
        if m.group().lower().startswith("this is") and words[0].lower() not in names and (
                len(words) < 2 or any(w.lower() in ORG_WORDS for w in words)):
            continue
        yield PiiSpan("name", start, end, " ".join(words).lower())
    for m in NAME_HERE.finditer(text):
        words = m.group(1).split()
        if not any(w.lower() in NOT_NAMES | ORG_WORDS for w in words):
            yield PiiSpan("name", m.start(1), m.end(1), m.group(1).lower())
    for m in CAPITALISED_PAIR.finditer(text):
        first, last = m.group(1), m.group(2)
        if first.lower() in names and last.lower() not in NOT_NAMES | ORG_WORDS:
            yield PiiSpan("name", m.start(1), m.end(2), f"{first} {last}".lower())


RECOGNIZERS = {"card_number": _cards, "iban": _ibans, "us_ssn": _ssns, "uk_nino": _ninos, "email": _emails,
               "phone": _phones, "name": _names}
# When spans overlap, the one found by the stronger evidence wins (a checksum beats a pattern).
# (An IBAN's digits can hold a Luhn-valid run: the IBAN, validated as a whole, wins.)
PRIORITY = {"iban": 0, "card_number": 1, "us_ssn": 2, "uk_nino": 3, "email": 4, "phone": 5, "name": 6}


def find_pii(text: str, kinds: Iterable[str] = KINDS) -> list[PiiSpan]:
    """Non-overlapping PII spans of `kinds` in `text`, in text order."""
    found: list[PiiSpan] = []
    for kind in kinds:
        found.extend(RECOGNIZERS[kind](text))
    found.sort(key=lambda s: (PRIORITY[s.kind], s.start))
    kept: list[PiiSpan] = []
    for span in found:
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def redact(text: str, spans: Iterable[PiiSpan]) -> str:
    """`text` with every span replaced by its kind's placeholder, ready to store: NUL characters are dropped too
    (PostgreSQL text and jsonb cannot hold U+0000; a chat message or a small model's output may contain one)."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[last:span.start])
        out.append(span.replacement)
        last = span.end
    out.append(text[last:])
    return "".join(out).replace("\x00", "")
