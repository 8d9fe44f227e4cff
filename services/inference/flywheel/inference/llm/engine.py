"""Continuous batching of causal LM generation on CPU, in one worker thread per loaded base model.

Requests join and leave the running batch between decode steps: a new request is prefilled on its own
(batch of one, only its last position's logits computed), samples its first token, and its key/value
cache is copied into the running batch; every decode step then runs ONE forward over all running
sequences (input [B, 1]), and each sequence samples from its own row. Finished or cancelled sequences
are dropped from the batch before the next step.

KV cache: one padded batch cache, not a DynamicCache per sequence. Each layer keeps preallocated key
and value buffers [B, kv_heads, capacity, head_dim]; sequences are right-aligned (left padding), a
[B, capacity] mask marks the real positions and each row has its own position ids, so rows of different
lengths share one forward. Decode steps write the new keys/values in place (no torch.cat of the whole
cache per step, which is what DynamicCache does); the buffers are copied only when the batch changes
(a join pads and appends a row, a leave drops rows and trims the columns that became padding for all).
Per-sequence DynamicCaches cannot share a forward: batching them means concatenating every cache at
every step (a full copy per step) or running one forward per sequence (no sharing; on this CPU a
decode step reads the whole 0.5 GB of weights whichever the batch size, so that is what batching
saves). When no row is padded the mask is left out, so a lone stream runs the same kernels as
Hugging Face `generate`.

Prompt-prefix reuse: the keys/values of recent prompts (per adapter) are kept in a small LRU (bounded
in tokens); a prompt that starts with at least `min_prefix_tokens` of one of them (the shared system
prompt of an application) prefills only the rest.

Adapters: PEFT LoRA adapters are loaded next to the base on the worker thread between steps (the base
is wrapped by PEFT once); each row names its adapter (PEFT's mixed-batch `adapter_names`, "__base__"
for the base), so requests for different adapters and the base share one batch. An adapter being
unloaded takes no new requests and is deleted once its running requests end.

The asyncio side never blocks: `submit` validates and queues (bounded; `Overloaded` when full) and
returns a `GenerationStream`, an async iterator of `GenerationChunk`s fed from the worker with
`call_soon_threadsafe`. Closing or cancelling the stream (a client that went away) frees its row at the
next step.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from flywheel.common.errors import InvalidArgument, NotFound, Unavailable
from flywheel.common.model_building import model_building
from flywheel.inference.llm.sampling import IncrementalDecoder, SamplingParams, StopMatcher, TokenSampler

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class Overloaded(Unavailable):
    """The engine's queue is full: retry later (doors answer 429 / RESOURCE_EXHAUSTED)."""


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens whose keys/values came from the prefix cache instead of being computed.
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationChunk:
    """One step of a stream: the text the token(s) added (may be empty while a character, word piece or
    possible stop string is held back). The last chunk has `finish_reason` ("stop": end-of-turn token or a
    stop string; "length": max_tokens or the context), `usage` and `time_to_first_token_s`."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    usage: Usage | None = None
    time_to_first_token_s: float | None = None


@dataclass
class Completion:
    """A whole generation (what `GenerationStream.collect` returns)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    time_to_first_token_s: float
    latency_s: float
    # Where the answer came from: "miss" (generated), or "exact" / "semantic" (the response cache; see
    # flywheel/inference/cache), so the prediction log can record it.
    cache: str = "miss"


@dataclass
class EngineStats:
    """Counters since the engine started (read them from any thread; written by the worker only)."""

    steps: int = 0  # decode forwards (each serves every running sequence)
    decode_tokens: int = 0  # tokens sampled from decode steps (the sum of the batch sizes)
    prefills: int = 0
    prefill_tokens: int = 0  # prompt tokens computed
    prefix_reused_tokens: int = 0  # prompt tokens taken from the prefix cache
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prefill_s: float = 0.0  # worker time in prefills
    decode_s: float = 0.0  # worker time in decode steps (forward + sampling + emitting)
    max_batch: int = 0  # the most sequences one decode step served
    running: int = 0  # sequences in the batch now
    waiting: int = 0  # submitted, not admitted yet


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    sampler: TokenSampler
    decoder: IncrementalDecoder
    stopper: StopMatcher
    submitted: float
    generated: list[int] = field(default_factory=list)
    pos: int = 0  # tokens of this sequence in the cache
    last: int = -1  # the last sampled token (next step's input)
    first_token_at: float = 0.0
    cached_tokens: int = 0
    cancelled: bool = False
    done: bool = False

    def emit(self, item: GenerationChunk | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody listens any more
            self.cancelled = True


class GenerationStream:
    """The chunks of one generation, as an async iterator (also an async context manager: leaving the
    block early cancels it). `cancel()` frees the sequence's row at the engine's next step."""

    def __init__(self, engine: GenerationEngine, seq: _Sequence) -> None:
        self._engine = engine
        self._seq = seq
        self._finished = False
        self.prompt_tokens = len(seq.prompt_ids)
        self.max_tokens = seq.max_new

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._seq.queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finish_reason is not None:
            self._finished = True
        return item

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine._cancel(self._seq)

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    async def collect(self) -> Completion:
        """Read the stream to its end."""
        start = self._seq.submitted
        parts: list[str] = []
        ids: list[int] = []
        async with self:
            async for chunk in self:
                parts.append(chunk.text)
                ids += chunk.token_ids
                if chunk.finish_reason is not None:
                    assert chunk.usage is not None
                    return Completion("".join(parts), ids, chunk.finish_reason, chunk.usage,
                                      chunk.time_to_first_token_s or 0.0, time.perf_counter() - start)
        raise Unavailable("the generation ended without a final chunk")


class _SlabLayer(DynamicLayer):
    """One layer's view of the batch's preallocated key/value buffers; `update` writes in place."""

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.is_initialized = True
        self.kbuf, self.vbuf = keys, values
        self.length = length
        self.dtype, self.device = keys.dtype, keys.device
        self.keys = keys[:, :, :length]
        self.values = values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        end = self.length + n
        self.kbuf[:, :, self.length:end] = key_states
        self.vbuf[:, :, self.length:end] = value_states
        self.length = end
        self.keys = self.kbuf[:, :, :end]
        self.values = self.vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0


class _Batch:
    """The running sequences and their padded key/value cache (right-aligned)."""

    def __init__(self) -> None:
        self.rows: list[_Sequence] = []
        self.length = 0  # columns in use
        self.keys: list[torch.Tensor] = []  # per layer [B, H, capacity, D]
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.layers: list[_SlabLayer] = []

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def _relayer(self) -> None:
        self.layers = [_SlabLayer(k, v, self.length) for k, v in zip(self.keys, self.values, strict=True)]

    def add(self, seq: _Sequence, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
            headroom: int, limit: int) -> None:
        """Append a prefilled sequence (its per-layer keys/values [1, H, P, D]); `limit`: most columns."""
        p = keys[0].shape[-2]
        t = max(self.length, p)
        b = len(self.rows)
        capacity = max(min(t + headroom, limit), self.capacity, t + 1)
        new_keys, new_values = [], []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            nk = k.new_zeros((b + 1, k.shape[1], capacity, k.shape[3]))
            nv = v.new_zeros((b + 1, v.shape[1], capacity, v.shape[3]))
            if b:
                nk[:b, :, t - self.length:t] = self.keys[i][:, :, :self.length]
                nv[:b, :, t - self.length:t] = self.values[i][:, :, :self.length]
            nk[b, :, t - p:t] = k[0]
            nv[b, :, t - p:t] = v[0]
            new_keys.append(nk)
            new_values.append(nv)
        mask = torch.zeros((b + 1, capacity), dtype=torch.long)
        if b:
            mask[:b, t - self.length:t] = self.mask[:, :self.length]
        mask[b, t - p:t] = 1
        self.keys, self.values, self.mask, self.length = new_keys, new_values, mask, t
        self.rows.append(seq)
        self._relayer()

    def keep(self, kept: list[int]) -> None:
        """Keep these rows (indices, in order); trim the leading columns no kept row uses."""
        if not kept:
            self.__init__()  # type: ignore[misc]
            return
        lead = self.length - max(self.rows[i].pos for i in kept)
        index = torch.tensor(kept, dtype=torch.long)
        self.keys = [k.index_select(0, index)[:, :, lead:].contiguous() for k in self.keys]
        self.values = [v.index_select(0, index)[:, :, lead:].contiguous() for v in self.values]
        self.mask = self.mask.index_select(0, index)[:, lead:].contiguous()
        self.rows = [self.rows[i] for i in kept]
        self.length -= lead
        self._relayer()

    def reserve(self, columns: int, headroom: int, limit: int) -> None:
        """Make room for `columns` more positions (grows the buffers by copying, rarely; at most `limit`)."""
        if self.length + columns <= self.capacity:
            return
        capacity = max(min(max(self.capacity * 2, self.length + columns + headroom), limit), self.length + columns)
        grow = capacity - self.capacity
        self.keys = [torch.nn.functional.pad(k, (0, 0, 0, grow)) for k in self.keys]
        self.values = [torch.nn.functional.pad(v, (0, 0, 0, grow)) for v in self.values]
        self.mask = torch.nn.functional.pad(self.mask, (0, grow))
        self._relayer()


class _PrefixCache:
    """Keys/values of recent prompts per adapter, LRU, bounded in tokens."""

    def __init__(self, max_tokens: int, min_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.entries: collections.OrderedDict[tuple[str | None, tuple[int, ...]],
                                              tuple[list[torch.Tensor], list[torch.Tensor]]] = \
            collections.OrderedDict()
        self.tokens = 0

    def lookup(self, adapter: str | None, ids: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """(reusable length, keys, values): the longest common prefix (< len(ids)) with a stored prompt."""
        best, best_key = 0, None
        for key in self.entries:
            if key[0] != adapter:
                continue
            stored = key[1]
            n = 0
            for a, b in zip(stored, ids, strict=False):
                if a != b:
                    break
                n += 1
            if n > best:
                best, best_key = n, key
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            return 0, [], []
        self.entries.move_to_end(best_key)
        keys, values = self.entries[best_key]
        return best, keys, values

    def store(self, adapter: str | None, ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        if self.max_tokens <= 0 or len(ids) < self.min_tokens or len(ids) > self.max_tokens:
            return
        key = (adapter, tuple(ids))
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = (keys, values)
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            (_, old), _ = self.entries.popitem(last=False)
            self.tokens -= len(old)

    def drop(self, adapter: str | None) -> None:
        for key in [k for k in self.entries if k[0] == adapter]:
            del self.entries[key]
            self.tokens -= len(key[1])


class GenerationEngine:
    """Serves one loaded causal LM (and the LoRA adapters loaded on it). Start it, `submit` from the event
    loop, stop it when the model is unloaded."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "", max_batch: int = 8, max_queue: int = 64,
                 max_context: int | None = None, max_tokens_cap: int = 1024,
                 eos_token_ids: Sequence[int] | None = None, prefix_cache_tokens: int = 2048,
                 min_prefix_tokens: int = 16, headroom: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        # The model's context, or less (`max_context`): it bounds the KV cache (rows x context x per-token size).
        model_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.max_context = min(model_context, max_context) if max_context else model_context
        self.max_tokens_cap = max_tokens_cap
        self.eos_token_ids = frozenset(eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer))
        self.headroom = headroom
        self.stats = EngineStats()
        self.adapters: dict[str, str] = {}  # adapter name -> "ready" | "unloading"
        self._peft = False
        self._prefix = _PrefixCache(prefix_cache_tokens, min_prefix_tokens)
        self._batch = _Batch()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._commands: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"llm-engine-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; requests still queued or running get Unavailable."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    def drain(self, timeout: float | None = None) -> bool:
        """Block until no request is waiting or running (or `timeout`); True when idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping or not (self._waiting or self._batch.rows), timeout)

    def run_on_worker(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the worker thread between two steps (model changes: adapters)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(Unavailable(f"model {self.name} is being unloaded"))
                return future
            self._commands.append((fn, future))
            self._cond.notify_all()
        return future

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.run_on_worker(fn))

    # -- submitting -------------------------------------------------------------------------------

    def check(self, prompt_tokens: int, params: SamplingParams, adapter: str | None = None) -> int:
        """Validate a request against the limits; returns the most tokens it may generate."""
        params.validate()
        if prompt_tokens <= 0:
            raise InvalidArgument("the prompt is empty")
        ctx = self.max_context
        if prompt_tokens >= ctx:
            raise InvalidArgument(f"the prompt has {prompt_tokens} tokens, but model {self.name!r} has a context of "
                                  f"{ctx} tokens (prompt + completion): shorten it to at most {ctx - 1} tokens")
        if params.max_tokens is not None:
            if params.max_tokens > self.max_tokens_cap:
                raise InvalidArgument(f"max_tokens {params.max_tokens} is above this server's cap of "
                                      f"{self.max_tokens_cap}")
            if prompt_tokens + params.max_tokens > ctx:
                raise InvalidArgument(
                    f"model {self.name!r} has a context of {ctx} tokens, but {prompt_tokens + params.max_tokens} were "
                    f"asked for ({prompt_tokens} in the prompt + {params.max_tokens} max_tokens): lower max_tokens to "
                    f"at most {ctx - prompt_tokens} or shorten the prompt")
            return params.max_tokens
        return min(self.max_tokens_cap, ctx - prompt_tokens)

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, adapter: str | None = None) -> GenerationStream:
        """Queue a generation (call it on the event loop). InvalidArgument for requests over the limits,
        NotFound for an adapter that is not loaded, Overloaded when the queue is full."""
        max_new = self.check(len(prompt_ids), params, adapter)
        if adapter is not None and self.adapters.get(adapter) != "ready":
            raise NotFound(f"adapter {adapter!r} is not loaded on {self.name!r}")
        loop = asyncio.get_running_loop()
        seq = _Sequence(prompt_ids=list(prompt_ids), params=params, max_new=max_new, adapter=adapter, loop=loop,
                        queue=asyncio.Queue(), sampler=TokenSampler(params),
                        decoder=IncrementalDecoder(self.tokenizer, prompt_ids), stopper=StopMatcher(tuple(params.stop)),
                        submitted=time.perf_counter())
        with self._cond:
            if self._stopping:
                raise Unavailable(f"model {self.name!r} is being unloaded; retry")
            if len(self._waiting) >= self.max_queue:
                raise Overloaded(f"model {self.name!r} is overloaded: {len(self._waiting)} requests are waiting "
                                 f"(queue limit {self.max_queue}) and {len(self._batch.rows)} are running; retry later")
            self._waiting.append(seq)
            self.stats.waiting = len(self._waiting)
            self._cond.notify_all()
        return GenerationStream(self, seq)

    def _cancel(self, seq: _Sequence) -> None:
        if seq.done:
            return
        seq.cancelled = True
        with self._cond:
            self._cond.notify_all()

    # -- adapters (run on the worker) ------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA adapter directory next to the base, between two steps."""
        await self.call(lambda: self._load_adapter(name, path))

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if name in self.adapters:
            self._delete_adapter(name)
        with model_building():
            if not self._peft:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
                self._peft = True
            else:
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
        self.model.eval()
        self.adapters[name] = "ready"

    async def unload_adapter(self, name: str) -> None:
        """Stop taking requests for the adapter; it is deleted once its running requests end."""
        if name in self.adapters:
            self.adapters[name] = "unloading"
            await self.call(lambda: self._maybe_delete(name))

    def _maybe_delete(self, name: str) -> None:
        if self.adapters.get(name) != "unloading":
            return
        busy = any(s.adapter == name for s in itertools.chain(self._batch.rows, self._waiting))
        if not busy:
            self._delete_adapter(name)

    def _delete_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        self._prefix.drop(name)
        if self._peft:
            if not self.adapters:  # back to the plain base model (PEFT's layers removed)
                self.model = self.model.unload()
                self._peft = False
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # PEFT notes which adapter becomes active: rows name theirs
                    self.model.delete_adapter(name)

    # -- the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._commands or self._waiting or self._batch.rows):
                        self._cond.notify_all()  # drain() waiters: idle now
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands, self._commands = self._commands, []
                for fn, future in commands:
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # reported to the caller
                        future.set_exception(exc)
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._batch.rows:
                        began = time.perf_counter()
                        self._step()
                        self.stats.decode_s += time.perf_counter() - began
                except Exception as exc:
                    log.exception("generation step failed", extra={"model": self.name})
                    self._fail_all(exc)
                for name, state in list(self.adapters.items()):
                    if state == "unloading":
                        self._maybe_delete(name)
        self._fail_all(Unavailable(f"model {self.name!r} was unloaded"), waiting=True)

    def _fail_all(self, exc: BaseException, waiting: bool = False) -> None:
        rows = list(self._batch.rows)
        if waiting:
            with self._cond:
                rows += list(self._waiting)
                self._waiting.clear()
        for seq in rows:
            if not seq.done:
                seq.done = True
                self.stats.failed += 1
                seq.emit(exc if isinstance(exc, Unavailable | InvalidArgument)
                         else Unavailable(f"generation failed: {type(exc).__name__}: {exc}"))
        self._batch = _Batch()
        self.stats.running = 0

    def _drop_cancelled(self) -> None:
        with self._cond:
            if any(s.cancelled for s in self._waiting):
                kept = [s for s in self._waiting if not s.cancelled]
                self.stats.cancelled += len(self._waiting) - len(kept)
                self._waiting = collections.deque(kept)
                self.stats.waiting = len(kept)
        rows = self._batch.rows
        if any(s.cancelled or s.done for s in rows):
            for s in rows:
                if s.cancelled and not s.done:
                    s.done = True
                    self.stats.cancelled += 1
            self._batch.keep([i for i, s in enumerate(rows) if not s.done])
            self.stats.running = len(self._batch.rows)

    def _admit(self) -> None:
        while len(self._batch.rows) < self.max_batch:
            with self._cond:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
                self.stats.waiting = len(self._waiting)
            if seq.cancelled:
                self.stats.cancelled += 1
                continue
            began = time.perf_counter()
            try:
                keys, values, logits = self._prefill(seq)
            except Exception as exc:
                log.exception("prefill failed", extra={"model": self.name})
                seq.done = True
                self.stats.failed += 1
                seq.emit(Unavailable(f"generation failed: {type(exc).__name__}: {exc}"))
                continue
            self.stats.prefill_s += time.perf_counter() - began
            self.stats.admitted += 1
            seq.pos = len(seq.prompt_ids)
            if self._accept(seq, seq.sampler.pick(logits)):
                continue
            self._batch.add(seq, keys, values, self.headroom, self.max_context)
            self.stats.running = len(self._batch.rows)

    def _forward_kwargs(self, rows: Sequence[_Sequence]) -> dict[str, Any]:
        if self._peft:
            return {"adapter_names": [s.adapter or BASE_ADAPTER for s in rows]}
        return {}

    def _prefill(self, seq: _Sequence) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        ids = seq.prompt_ids
        reused, keys, values = self._prefix.lookup(seq.adapter, ids)
        cache = DynamicCache()
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.update(k[:, :, :reused], v[:, :, :reused], i)
        rest = ids[reused:]
        out = self.model(input_ids=torch.tensor([rest], dtype=torch.long),
                         position_ids=torch.arange(reused, len(ids), dtype=torch.long).unsqueeze(0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1, **self._forward_kwargs([seq]))
        self.stats.prefills += 1
        self.stats.prefill_tokens += len(rest)
        self.stats.prefix_reused_tokens += reused
        seq.cached_tokens = reused
        cache = out.past_key_values
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        self._prefix.store(seq.adapter, ids, keys, values)
        return keys, values, out.logits[0, -1].float()

    def _step(self) -> None:
        batch = self._batch
        rows = batch.rows
        batch.reserve(1, self.headroom, self.max_context)
        t = batch.length
        padded = any(s.pos != t for s in rows)
        attention_mask = None
        if padded:
            batch.mask[:, t] = 1
            attention_mask = batch.mask[:, :t + 1]
        cache = DynamicCache()
        cache.layers = batch.layers  # type: ignore[assignment]
        out = self.model(input_ids=torch.tensor([[s.last] for s in rows], dtype=torch.long),
                         position_ids=torch.tensor([[s.pos] for s in rows], dtype=torch.long),
                         attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         **self._forward_kwargs(rows))
        if not padded:
            batch.mask[:, t] = 1
        batch.length = t + 1
        logits = out.logits[:, -1].float()
        self.stats.steps += 1
        self.stats.decode_tokens += len(rows)
        self.stats.max_batch = max(self.stats.max_batch, len(rows))
        finished = False
        for i, seq in enumerate(rows):
            seq.pos += 1
            if seq.cancelled:
                finished = True
                continue
            finished |= self._accept(seq, seq.sampler.pick(logits[i]))
        if finished:
            self._drop_cancelled()

    def _accept(self, seq: _Sequence, token: int) -> bool:
        """Record a sampled token and emit its text; True when the sequence is finished (and marked done)."""
        seq.generated.append(token)
        seq.last = token
        now = time.perf_counter()
        if not seq.first_token_at:
            seq.first_token_at = now
        finish: str | None = None
        if token in self.eos_token_ids:
            finish = "stop"
            text, stopped = seq.stopper.feed(seq.decoder.flush())
            if not stopped:
                text += seq.stopper.flush()
        else:
            text, stopped = seq.stopper.feed(seq.decoder.push(token))
            if stopped:
                finish = "stop"
            elif len(seq.generated) >= seq.max_new:
                finish = "length"
                tail, stopped = seq.stopper.feed(seq.decoder.flush())
                text += tail
                if stopped:
                    finish = "stop"
                else:
                    text += seq.stopper.flush()
        if finish is None:
            seq.emit(GenerationChunk(text, [token]))
            return False
        seq.done = True
        self.stats.finished += 1
        seq.emit(GenerationChunk(text, [token], finish,
                                 Usage(len(seq.prompt_ids), len(seq.generated), seq.cached_tokens),
                                 seq.first_token_at - seq.submitted))
        return True


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@contextlib.contextmanager
def torch_threads(n: int) -> Any:
    """Temporarily use `n` intra-op threads (0 = leave as is)."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
