"""What the response caches hold: `CachedAnswer` (a finished generation), and `MemoryCache`, the in-process
LRU in front of the database (the exact cache's fast path), bounded by entries and bytes."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CachedAnswer:
    """A finished generation as stored: replayed on a hit. `usage` is the generation's that produced it;
    `extra` is JSON the caller stored with it (an application's citations)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    model_version: int
    tenant: str
    dependencies: Mapping[str, int]
    expires_at: float  # unix time
    extra: Mapping[str, Any] = field(default_factory=dict)

    def size_bytes(self) -> int:
        """About what the entry holds in memory (the text, the ids, the key and the bookkeeping)."""
        return sys.getsizeof(self.text) + 8 * len(self.token_ids) + 512 + 64 * len(self.dependencies) + \
            (sum(len(str(k)) + len(str(v)) for k, v in self.extra.items()) if self.extra else 0)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at


class MemoryCache:
    """exact key -> CachedAnswer, least recently used out first, at most `max_entries` and about `max_bytes`.
    Event-loop only (no locking)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[CachedAnswer, int]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float | None = None) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0].expired(now):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, answer: CachedAnswer) -> None:
        if self.max_entries <= 0:
            return
        size = answer.size_bytes()
        if size > self.max_bytes:
            return  # larger than the whole cache: not kept in memory (the database still has it)
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (answer, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evicted += 1

    def _drop(self, key: str) -> None:
        _, size = self._entries.pop(key)
        self.bytes -= size

    def evict_model(self, name: str, keep_version: int) -> int:
        """Drop the entries whose answer came from `name` (a model, adapter or prompt template it depends on)
        at another version than `keep_version`; returns how many."""
        stale = [k for k, (a, _) in self._entries.items()
                 if name in a.dependencies and a.dependencies[name] != keep_version]
        for key in stale:
            self._drop(key)
        return len(stale)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
