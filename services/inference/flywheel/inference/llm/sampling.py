"""Per-request sampling, stop strings and incremental detokenization (torch only, no transformers).

- `SamplingParams`: what a request asks for (OpenAI's names); `validate` raises InvalidArgument.
- `TokenSampler`: picks the next token from one row of logits. Greedy at temperature 0; otherwise
  temperature, then top-p (nucleus), then one uniform draw from the request's own generator, inverted
  through the cumulative distribution. One generator per request, seeded by `seed` (or at random), and
  one draw per token: a seeded request gives the same tokens alone or sharing a batch with others.
- `StopMatcher`: stop strings over a stream of text deltas. It holds back any tail that could be the
  start of a stop string, so a stop split across tokens is found and never partly emitted.
- `IncrementalDecoder`: token ids -> text deltas. It decodes a small window (the tokens since the last
  emitted boundary, after a few tokens of context) and emits only what the new token added, holding
  back while the text ends in an incomplete UTF-8 sequence (U+FFFD), so multi-byte characters and
  word pieces come out whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from flywheel.common.errors import InvalidArgument

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of one request. `max_tokens` None = as many as fit (capped by the engine's `max_tokens_cap`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def validate(self) -> SamplingParams:
        if not (0.0 <= self.temperature <= 2.0) or self.temperature != self.temperature:
            raise InvalidArgument(f"temperature must be between 0 and 2, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or self.max_tokens < 1):
            raise InvalidArgument(f"max_tokens must be at least 1, got {self.max_tokens}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidArgument(f"stop strings must be non-empty strings, got {s!r}")
            if len(s) > MAX_STOP_CHARS:
                raise InvalidArgument(f"a stop string has at most {MAX_STOP_CHARS} characters, got {len(s)}")
        if self.seed is not None and not (-MAX_SEED - 1 <= self.seed <= MAX_SEED):
            raise InvalidArgument(f"seed must fit in a signed 64-bit integer, got {self.seed}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def deterministic(self) -> bool:
        """Whether the same request always gives the same answer (greedy, or sampled with a seed)."""
        return self.greedy or self.seed is not None


class TokenSampler:
    """Picks the next token of one sequence from its logits row (float32 [vocab])."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
            self.generator = torch.Generator().manual_seed(seed % 2**64)

    def pick(self, logits: torch.Tensor) -> int:
        if self.generator is None:
            return int(torch.argmax(logits))
        scaled = logits.float() / self.params.temperature
        u = float(torch.rand((), generator=self.generator))  # one draw per token, whatever the batch
        if self.params.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            cumulative = torch.cumsum(probs, dim=-1)
            # Keep the smallest head whose mass reaches top_p (the top token always stays).
            keep = min(int(torch.searchsorted(cumulative, torch.tensor(self.params.top_p))) + 1, cumulative.shape[0])
            kept = cumulative[:keep]
            index = int(torch.searchsorted(kept, torch.tensor(u * float(kept[-1])), right=True))
            return int(order[min(index, keep - 1)])
        probs = torch.softmax(scaled, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        index = int(torch.searchsorted(cumulative, torch.tensor(u * float(cumulative[-1])), right=True))
        return min(index, logits.shape[-1] - 1)


@dataclass
class StopMatcher:
    """Finds stop strings in streamed text. `feed(delta)` -> (text safe to emit, stopped)."""

    stops: tuple[str, ...]
    _pending: str = field(default="", repr=False)

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self._pending + delta
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self._pending = ""
            return text[:min(found)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        """The held-back tail, when the sequence ends without a stop string."""
        text, self._pending = self._pending, ""
        return text


class Detokenizer(Protocol):
    def decode(self, ids: list[int], **kwargs: Any) -> str: ...


class IncrementalDecoder:
    """Token ids in, text deltas out. `context` (the prompt's last ids) makes the first token decode as
    it would mid-text (a leading space of a word piece is kept)."""

    CONTEXT = 4

    def __init__(self, tokenizer: Detokenizer, context: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context or [])[-self.CONTEXT:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        # A NUL byte token is never text a client can use, and PostgreSQL (the caches, every consumer storing an
        # answer) cannot hold U+0000: the stream never carries one. (Tiny test models emit it now and then.)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).replace(
            "\x00", "")

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end comes out as U+FFFD)."""
        if self.read_offset == len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if text.startswith(prefix) else ""
