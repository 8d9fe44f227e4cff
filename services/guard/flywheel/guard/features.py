"""Text features of the guard's classifiers: hashed word unigrams and bigrams plus character 4-grams
inside words, binary, L2-normalised.

Chosen over all-MiniLM-L6-v2 embeddings for the hot path: on this project's 2-core CPU MiniLM takes
~30 ms for a 500-character prompt (one thread), while these features and a linear model score it in
well under a millisecond (see the README's measurements). The hash is CRC-32, stable across processes
and Python versions, so an artifact trained anywhere scores the same everywhere.
"""

from __future__ import annotations

import functools
import re
import zlib

import numpy as np

WORD = re.compile(r"[a-z0-9']+")
DIGIT = re.compile(r"\d")
LETTER = re.compile(r"[a-z]")
SPACED = re.compile(r"(?:\b[a-z] ){4,}[a-z]\b")
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})


def tokens(text: str) -> list[str]:
    """Lower-cased words; a word mixing letters and digits is read as leetspeak ("1gn0re" -> "ignore"); other
    digits are folded to 0 (amounts and ids carry no class)."""
    out = []
    for w in WORD.findall(text.lower()):
        if DIGIT.search(w):
            w = w.translate(LEET) if LETTER.search(w) else DIGIT.sub("0", w)
        out.append(w)
    return out


@functools.lru_cache(maxsize=65_536)
def _word_keys(word: str, mask: int) -> tuple[int, ...]:
    """A word's own features: the word and its character 4-grams (with word boundaries)."""
    padded = f" {word} "
    keys = [zlib.crc32(b"w" + word.encode()) & mask]
    keys += [zlib.crc32(b"c" + padded[i:i + 4].encode()) & mask for i in range(len(padded) - 3)]
    return tuple(keys)


def hashed(text: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values): the text's features, each in [0, 2**bits), values L2-normalised."""
    mask = (1 << bits) - 1
    words = tokens(text)
    keys: set[int] = set()
    crc = zlib.crc32
    previous = "^"
    for w in words:
        keys.update(_word_keys(w, mask))
        keys.add(crc(f"b{previous} {w}".encode()) & mask)
        previous = w
    if words:
        keys.add(crc(f"b{previous} $".encode()) & mask)
    # Letter-spaced words ("i g n o r e") read as one word too.
    for run in SPACED.findall(" ".join(text.lower().split())):
        keys.add(crc(b"w" + run.replace(" ", "").encode()) & mask)
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    indices = np.fromiter(keys, dtype=np.int64, count=len(keys))
    values = np.full(len(indices), 1.0 / np.sqrt(len(indices)), dtype=np.float32)
    return indices, values
