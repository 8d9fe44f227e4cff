"""Agreement between reviewers on double-labelled items: Cohen's kappa per queue and per reviewer pair.

Pure logic. Each double-labelled item contributes one pair of categories: the label names of a
predictive item, or approve / correct / reject of an answer. Per queue, the first decision of an item
is rater A and the second rater B (kappa asks for two raters; with many reviewers this pools them,
the usual reading for a queue); per reviewer pair, each reviewer is one rater.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' categories, (p_o - p_e) / (1 - p_e); None when it is undefined (no
    pairs, or both raters always gave the same one category, so chance agreement is 1)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first.keys() | second.keys()) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class Rating:
    """One decision of a double-labelled item, in decision order within the item."""

    item_id: str
    queue: str
    reviewer: str
    category: str


@dataclass(frozen=True)
class Agreement:
    """Agreement over `items` double-labelled items: the share labelled alike and Cohen's kappa."""

    items: int
    agreed: int
    kappa: float | None

    @property
    def observed(self) -> float | None:
        return self.agreed / self.items if self.items else None


def agreement(pairs: Sequence[tuple[str, str]]) -> Agreement:
    return Agreement(len(pairs), sum(a == b for a, b in pairs), cohen_kappa(pairs))


def item_pairs(ratings: Iterable[Rating]) -> dict[str, tuple[Rating, Rating]]:
    """Item id -> its first two ratings by different reviewers (items with fewer are left out)."""
    by_item: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        seen = by_item[r.item_id]
        if len(seen) < 2 and all(s.reviewer != r.reviewer for s in seen):
            seen.append(r)
    return {item: (rs[0], rs[1]) for item, rs in by_item.items() if len(rs) == 2}


def by_queue(ratings: Iterable[Rating]) -> dict[str, Agreement]:
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for a, b in item_pairs(ratings).values():
        pairs[a.queue].append((a.category, b.category))
    return {queue: agreement(p) for queue, p in sorted(pairs.items())}


def by_reviewer_pair(ratings: Iterable[Rating]) -> dict[tuple[str, str, str], Agreement]:
    """(queue, reviewer, other reviewer) -> agreement, the two names in alphabetical order."""
    pairs: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for a, b in item_pairs(ratings).values():
        first, second = sorted((a, b), key=lambda r: r.reviewer)
        pairs[(a.queue, first.reviewer, second.reviewer)].append((first.category, second.category))
    return {key: agreement(p) for key, p in sorted(pairs.items())}
