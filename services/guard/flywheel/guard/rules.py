"""Rules beside the trained detectors: patterns so plain that a model adds nothing (an instruction
override, a request for the system prompt, a named jailbreak persona, a relative's balance), and
decoding of base64 / hex blobs so that an encoded instruction is scored as the text it hides.

A rule that matches gives its rail a score of RULE_SCORE; the rail's score is the larger of the
model's and the rules'. Rules are code, versioned with the guard; detectors are data, versioned in
the registry.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

RULE_SCORE = 0.97

_INSTRUCTION_WORDS = (r"(?:instructions?|rules|guidelines|directions|prompt|policies|policy|restrictions|filters|"
                      r"programming|guardrails|safety (?:checks|filters|layer|training)|content policy)")
INJECTION = [
    ("instruction-override", re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|drop|suspend|disable)\b[^.?!\n]{0,40}?"
        r"\b(?:previous|prior|above|earlier|all|your|the|any|these|its|my)\b[^.?!\n]{0,25}?\b" + _INSTRUCTION_WORDS
        + r"\b", re.IGNORECASE)),
    ("prompt-extraction", re.compile(
        r"\b(?:reveal|show|print|repeat|output|tell|quote|dump|display|translate|give|list|write|leak|recite)\b"
        r"[^.?!\n]{0,40}?\b(?:system (?:prompt|message)|developer message|hidden (?:instructions|context|prompt)|"
        r"(?:initial|original|full|secret|internal) (?:prompt|instructions)|your (?:system )?prompt|"
        r"(?:your|the) (?:hidden|secret|internal|exact) instructions|prompt template)", re.IGNORECASE)),
    ("jailbreak-persona", re.compile(
        r"\b(?:developer mode|god mode|jailbreak(?:ed|s)?|jailbroken|unrestricted (?:mode|ai|model)|"
        r"do anything now|no (?:rules|restrictions|filters|guidelines|content policy)|without (?:any )?"
        r"(?:restrictions|filters|rules|guardrails)|maintenance mode|debug mode|safety (?:protocols|filters) "
        r"(?:disabled|off))\b|\bDAN\b", re.IGNORECASE)),
    ("fake-system-turn", re.compile(r"(?:^|\n|\s)(?:\[?system\]?|###\s*instruction|\[admin\])\s*[:\]]",
                                    re.IGNORECASE)),
]

_RELATIONS = (r"(?:neighbou?r|ex|ex-wife|ex-husband|wife|husband|partner|girlfriend|boyfriend|brother|sister|son|"
              r"daughter|mother|mum|mom|father|dad|friend|flatmate|roommate|housemate|colleague|boss|tenant|landlord|"
              r"employee|aunt|uncle|cousin|grandmother|grandfather|grandma|grandpa|fianc[ée]e?|stepdad|stepmum|"
              r"stepmom|business partner)")
_DATA = (r"(?:balance|account|card|pin|transactions?|statements?|spending|spent|payments?|address|phone|number|email|"
         r"overdraft|loan|debts?|savings|salary|limit|password|details|withdrawals?|mortgage)")
_ASK = (r"(?:tell|show|give|check|what'?s|what is|what does|what did|how much|look up|find|see|read|send|list|"
        r"pull up|need|want|did|has|is|does|can i (?:have|get|see))")
OTHER_CUSTOMER = [
    ("relative-data", re.compile(
        rf"\b{_ASK}\b[^.?!\n]{{0,30}}?\bmy {_RELATIONS}'s\b[^.?!\n]{{0,40}}?\b{_DATA}\b", re.IGNORECASE)),
    ("named-customer-lookup", re.compile(
        r"\b(?:look up|find|check|show|tell me about|details (?:of|for)|balance (?:of|for))\b[^.?!\n]{0,20}"
        r"\b(?:customer|account holder|client)\b[^.?!\n]{0,10}(?:named |called |number )?[A-Z0-9]", re.IGNORECASE)),
    ("account-owner", re.compile(
        r"\b(?:who (?:owns|is the owner of|does)|whose|owner of|belong(?:s)? to)\b[^.?!\n]{0,40}"
        r"\b(?:account|card)\b", re.IGNORECASE)),
    ("customer-list", re.compile(r"\b(?:list|which|give me (?:a|the) list of)\b[^.?!\n]{0,12}\b(?:all )?customers\b",
                                 re.IGNORECASE)),
]

# Proper routes to help with someone else's banking: not a request for their data.
PROPER_ROUTE = re.compile(r"\b(?:power of attorney|third[- ]party mandate|mandate|deceased|died|passed away|"
                          r"bereavement|executor|guardian)\b", re.IGNORECASE)

BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}){10,}\b")


def matches(rules: list[tuple[str, re.Pattern[str]]], text: str) -> list[str]:
    return [name for name, pattern in rules if pattern.search(text)]


def decoded_blobs(text: str) -> list[str]:
    """Readable texts hidden in base64 or hex blobs of `text`."""
    found = []
    for m in BASE64.finditer(text):
        blob = m.group()
        if blob.isdigit() or (blob.isalpha() and (blob.islower() or blob.isupper())):
            continue  # a number or a plain word, not an encoding
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        found.append(raw)
    for m in HEX.finditer(text):
        if m.group().isdigit():
            continue
        found.append(bytes.fromhex(m.group()))
    texts = []
    for raw in found:
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if decoded and sum(ch.isprintable() or ch.isspace() for ch in decoded) / len(decoded) > 0.95 \
                and sum(ch.isalpha() for ch in decoded) / len(decoded) > 0.6:
            texts.append(decoded)
    return texts


def rule_score(rules: list[tuple[str, re.Pattern[str]]], text: str,
               model: Callable[[str], float] | None = None) -> tuple[float, list[str]]:
    """RULE_SCORE and the names of the rules that match `text` or a blob decoded from it (decoded blobs
    are also scored by `model`, when given); (0, []) when nothing matches."""
    names = matches(rules, text)
    if rules is OTHER_CUSTOMER and PROPER_ROUTE.search(text):
        names = []
    best = RULE_SCORE if names else 0.0
    for hidden in decoded_blobs(text):
        hidden_names = matches(rules, hidden)
        score = RULE_SCORE if hidden_names else 0.0
        if model is not None:
            score = max(score, model(hidden))
        if score > 0.5:
            names.append("encoded:" + ("+".join(hidden_names) or "model"))
        best = max(best, score)
    return best, names
