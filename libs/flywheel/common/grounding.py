"""Groundedness of an answer against the chunks it was generated from, by lexical support (shared by the
guard's groundedness rail, the evaluator's LLM metrics and online scoring).

An answer is split into sentences; sentences that need no source (greetings, offers of more help)
are skipped. A sentence's support is the share of its content words (stop words dropped, words
reduced to a crude stem) found in the chunks or the user's input; numbers (amounts, percentages,
days) must appear there exactly, since a wrong figure is the commonest unsupported claim. The
features of the answer (weakest sentence's support, mean support, unsupported numbers, share of weak
sentences) go through a logistic model fitted on the shipped grounding set (`training.py`), which
gives the probability the answer is ungrounded.

What it cannot do: it sees words, not meaning, so a paraphrase with all-new words reads as
unsupported and a sentence that reuses the chunk's words to say the opposite ("disputes are not
free") reads as supported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A sentence ends at . ! ? or a line break, but not at the point of a decimal ("2.5%", "EUR 1.50").
SENTENCE = re.compile(r"(?:[^.!?\n]|(?<=\d)\.(?=\d))+(?:[.!?]+|\n|$)")
WORD = re.compile(r"\$?\d[\d,]*(?:\.\d+)?%?|[a-z][a-z'-]*")
STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those you your yours we our us i me my he she they them their there here can could will would
shall should may might must do does did done have has had not no so than then too very just also about into
over under up down out any all each every some such only own same other more most less least what which who
whom whose when where why how per via get gets got let lets please thanks thank hi hello yes ok okay""".split())
# Sentences that carry no claim (nothing to support).
FILLER = re.compile(r"^(?:i hope (?:that|this) helps|is there anything else|let me know|thanks|thank you|"
                    r"happy to help|i'm sorry|i am sorry|sorry|hello|hi|good (?:morning|afternoon|evening)|"
                    r"you're welcome|glad|great question)", re.IGNORECASE)
NUMBER = re.compile(r"^\$?\d")
# Number words an answer may use for a figure the source writes in digits (or the other way round).
NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9", "ten": "10", "twelve": "12", "fifteen": "15", "twenty": "20",
                "thirty": "30", "sixty": "60", "ninety": "90", "hundred": "100"}
FEATURES = ("weakest_gap", "mean_gap", "unsupported_numbers", "any_unsupported_number", "weak_share", "sentences")
WEAK = 0.5


def stem(word: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def number_token(token: str) -> str:
    return token.replace(",", "").rstrip(".")


def content(text: str) -> tuple[set[str], set[str]]:
    """(stemmed content words, numbers) of a text."""
    words, numbers = set(), set()
    for token in WORD.findall(text.lower()):
        if NUMBER.match(token):
            numbers.add(number_token(token).lstrip("$"))
        elif token in NUMBER_WORDS:
            numbers.add(NUMBER_WORDS[token])
        elif token not in STOP and len(token) > 2:
            words.add(stem(token))
    return words, numbers


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`."""
    return [(m.start(), m.end()) for m in SENTENCE.finditer(text) if m.group().strip()]


@dataclass(frozen=True)
class SentenceSupport:
    start: int
    end: int
    support: float
    unsupported_numbers: int


@dataclass(frozen=True)
class Grounding:
    features: np.ndarray
    sentences: list[SentenceSupport]

    @property
    def judged(self) -> int:
        return len(self.sentences)


def judge(answer_sentences: Sequence[str], sources: Sequence[str], offsets: Sequence[tuple[int, int]] | None = None
          ) -> Grounding:
    """Support of each claim sentence by the sources, and the answer's features (see FEATURES)."""
    source_words: set[str] = set()
    source_numbers: set[str] = set()
    for s in sources:
        w, n = content(s)
        source_words |= w
        source_numbers |= n
    judged: list[SentenceSupport] = []
    for i, sentence in enumerate(answer_sentences):
        stripped = sentence.strip()
        if not stripped or FILLER.match(stripped):
            continue
        words, numbers = content(stripped)
        if not words and not numbers:
            continue
        unsupported = len(numbers - source_numbers)
        hits = len(words & source_words) + len(numbers & source_numbers)
        support = hits / (len(words) + len(numbers))
        start, end = offsets[i] if offsets else (0, 0)
        judged.append(SentenceSupport(start, end, support, unsupported))
    return Grounding(features_of(judged), judged)


def features_of(judged: Sequence[SentenceSupport]) -> np.ndarray:
    if not judged:
        return np.zeros(len(FEATURES), dtype=np.float64)
    supports = np.array([s.support for s in judged])
    numbers = sum(s.unsupported_numbers for s in judged)
    return np.array([1 - supports.min(), 1 - supports.mean(), min(numbers, 3) / 3, float(numbers > 0),
                     float(np.mean(supports < WEAK)), min(len(judged), 10) / 10], dtype=np.float64)


def groundedness(answer: str, sources: Sequence[str]) -> float | None:
    """Share of the answer's claim sentences that the sources support (support >= WEAK and every number
    found in them): 1.0 = every claim grounded. None when the answer makes no claim (a refusal, filler)."""
    judged = judge([answer[s:e] for s, e in sentences(answer)], sources).sentences
    if not judged:
        return None
    return sum(1 for s in judged if s.support >= WEAK and not s.unsupported_numbers) / len(judged)
