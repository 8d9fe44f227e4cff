"""Which LLMs and adapters inference serves, kept in step with the registry, and the Python API the doors
(OpenAI-compatible REST, gRPC Generate) call.

Lifecycle. The repository hands every model whose champion is of kind MODEL_KIND_LLM or
MODEL_KIND_LORA_ADAPTER (or that lost its champion while served here) to `schedule(name)`; a per-name
reconcile (serialized, coalesced, retried with backoff) then:
- an LLM: makes sure its champion version is loaded (download into a content-addressed cache under
  the service's home, unpack, load in a worker thread, int8 if the settings say so, start an engine),
  then points the name at it with one assignment;
- an adapter: makes sure the base version its lineage names (`base_model`) is loaded, loads the adapter
  onto that base's engine between two decode steps (the base is not reloaded; running requests go on),
  points the name at it, then unloads the adapter version it replaces once that one's requests end;
- no champion any more: the name stops taking requests; its adapter is unloaded after its running
  requests, a base no name uses any more is drained and freed.
One copy of each base version is loaded, whatever the number of names and adapters on it. Nothing of
transformers/peft is imported until the first LLM is promoted.

Pinned versions (evaluation traffic: gRPC Generate's `model_version`). `await service.pin(name, version)` serves a
version of `name` next to its champion, loaded on the first request that asks for it (every request for the same
pin waits for that one load): an LLM version gets its own engine (a distilled student), an adapter version is
loaded onto the base its lineage names (sharing that base's engine when the base is loaded already, e.g. the
champion's). The champion's own version is answered by the champion's route. At most `max_pinned` versions stay
pinned (the least recently used idle one is unloaded for a new one); a pin idle for `pinned_idle_s` is unloaded,
never while it has running requests; a base only pins used is freed with its last pin. Pins use their own engine
adapter names, so a pin and a promotion of the same version never unload each other's adapter.

The API (all on the event loop; nothing here blocks it):
    service.models() -> list[ServedModel]                    what can be asked for now (GET /v1/models)
    service.model(name) -> ServedModel                       NotFound naming what is served
    service.chat_prompt(name, messages) -> list[int]          the chat template applied (InvalidArgument)
    service.encode(name, text) -> list[int]
    service.submit(name, messages=... | prompt=... | prompt_ids=..., params=SamplingParams(...)) -> Generation
        validates and queues; raises before anything streams: NotFound, InvalidArgument (limits, with the
        numbers), Overloaded (queue full; an Unavailable), Unavailable (not loaded yet)
    async for chunk in generation: GenerationChunk(text, token_ids, finish_reason, usage, time_to_first_token_s)
    await generation.collect() -> Completion;  generation.cancel() / `async with generation:` frees it
    await service.generate(name, ...) -> Completion           submit + collect
    await service.pin(name, version) -> ServedModel           a pinned version (loaded on demand); then
        model / tokenizer / chat_prompt / encode / submit take `version=` (0: the champion)
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.common.model_dirs import cached, unpack
from flywheel.common.tasks import cancel_and_wait
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.proto.events.v1 import common_pb2

if TYPE_CHECKING:
    from flywheel.inference.llm.engine import Completion, GenerationChunk, GenerationEngine, GenerationStream

log = logging.getLogger(__name__)

LLM_KINDS = (common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER)
BASE, ADAPTER = "llm", "adapter"

GENERATIONS = Counter("flywheel_llm_generations_total", "Generations submitted, by model and outcome.",
                      ["model", "outcome"])
LOADED = Gauge("flywheel_llm_loaded_version", "Version of each LLM or adapter name served (0 = none).", ["model"])
PINNED = Gauge("flywheel_llm_pinned_versions", "Versions of each name served pinned (evaluation traffic), next to "
               "its champion.", ["model"])
PIN_EVENTS = Counter("flywheel_llm_pinned_total", "Pinned versions loaded, unloaded (idle or lru) or failed to load.",
                     ["model", "event"])


@dataclass
class LLMSettings:
    """How the engines run (from InferenceSettings' llm_* fields)."""

    cache_dir: Path
    quantization: dict[str, str] = field(default_factory=dict)  # base model name -> "none" | "int8"
    max_batch: int = 8
    max_queue: int = 64
    max_tokens: int = 1024
    max_context: int = 2048  # at most the model's; bounds the KV cache memory
    prefix_cache_tokens: int = 2048
    min_prefix_tokens: int = 16
    max_pinned: int = 2  # versions served pinned at once (least recently used unloaded first)
    pinned_idle_s: float = 300.0  # a pinned version idle this long is unloaded


@dataclass(frozen=True)
class ServedModel:
    """A name requests can ask for: a base LLM, or a LoRA adapter on one."""

    name: str
    version: int
    kind: str  # "llm" or "adapter"
    base_name: str
    base_version: int
    context_length: int
    quantization: str
    loaded_at: float  # unix time


class _Base:
    """One loaded base version and its engine."""

    def __init__(self, name: str, version: int, engine: GenerationEngine, quantization: str) -> None:
        self.name = name
        self.version = version
        self.engine = engine
        self.quantization = quantization
        self.users: set[str] = set()  # served names on this base (itself and adapters)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer


@dataclass
class _Route:
    served: ServedModel
    base: _Base
    adapter: str | None  # the adapter's name in the engine


@dataclass
class _Pin:
    """A version served pinned next to its name's champion."""

    route: _Route
    user: str  # its key in the base's users
    running: int = 0
    last_used: float = field(default_factory=time.monotonic)


class Generation:
    """A submitted generation: an async iterator of GenerationChunk (see the module docstring)."""

    def __init__(self, served: ServedModel, stream: GenerationStream, prompt_ids: list[int] | None = None,
                 on_done: Callable[[], None] | None = None) -> None:
        self.model = served
        self.stream = stream
        self.prompt_ids = list(prompt_ids or [])  # what the model reads (for the generation log)
        self.prompt_tokens = stream.prompt_tokens
        self.max_tokens = stream.max_tokens
        self._on_done = on_done  # a pinned version's running count (called once: ended, failed or cancelled)

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self.stream if self._on_done is None else self._counted()

    async def _counted(self) -> AsyncIterator[GenerationChunk]:
        try:
            async for chunk in self.stream:
                if chunk.finish_reason is not None:
                    self._done()
                yield chunk
        finally:
            self._done()

    def _done(self) -> None:
        done, self._on_done = self._on_done, None
        if done is not None:
            done()

    async def collect(self) -> Completion:
        try:
            return await self.stream.collect()
        finally:
            self._done()

    def cancel(self) -> None:
        self.stream.cancel()
        self._done()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


def check_adapter_dir(directory: Path, what: str) -> None:
    """Refuse what is not a PEFT LoRA directory before it goes near the loaded base (PEFT changes the base's
    modules in place while it loads an adapter)."""
    import json

    config = directory / "adapter_config.json"
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"adapter {what}: no readable adapter_config.json ({exc})") from None
    if peft_type != "LORA":
        raise FailedPrecondition(f"adapter {what}: peft_type {peft_type!r}, only LORA adapters are served")
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file():
        raise FailedPrecondition(f"adapter {what}: no adapter_model.safetensors")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            if not list(f.keys()):
                raise FailedPrecondition(f"adapter {what}: adapter_model.safetensors holds no tensors")
    except FailedPrecondition:
        raise
    except Exception as exc:
        raise FailedPrecondition(f"adapter {what}: unreadable adapter_model.safetensors ({exc})") from None


def _engine_adapter_name(name: str, version: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{name}_v{version}")


class LLMService:
    def __init__(self, registry: ModelRegistry, settings: LLMSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.routes: dict[str, _Route] = {}
        self.bases: dict[tuple[str, int], _Base] = {}
        self.load_errors: dict[str, str] = {}
        self._base_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        self._background: set[asyncio.Task] = set()
        self.known: set[str] = set()  # every name handed over (served or not), so a lost champion is seen
        self.pins: dict[tuple[str, int], _Pin] = {}  # (name, version) -> a version served pinned
        self._pin_loads: dict[tuple[str, int], asyncio.Task] = {}
        self._reaper: asyncio.Task | None = None

    # -- the API for the doors ----------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        return [self.routes[n].served for n in sorted(self.routes)]

    def model(self, name: str, version: int = 0) -> ServedModel:
        return self._route(name, version).served

    def pinned(self) -> list[ServedModel]:
        """The versions served pinned now (evaluation traffic), by name and version."""
        return [self.pins[k].route.served for k in sorted(self.pins)]

    def _route(self, name: str, version: int = 0) -> _Route:
        if version:
            champion = self.routes.get(name)
            if champion is not None and champion.served.version == version:
                return champion
            pin = self.pins.get((name, version))
            if pin is None:
                raise Unavailable(f"model {name!r} v{version} is not pinned here (yet): pin it first")
            return pin.route
        route = self.routes.get(name)
        if route is None:
            served = ", ".join(sorted(self.routes)) or "none"
            if name in self._pending and not self._pending[name].done():
                raise Unavailable(f"model {name!r} is being loaded; retry shortly")
            raise NotFound(f"model {name!r} is not served; LLMs served: {served}")
        return route

    def tokenizer(self, name: str, version: int = 0) -> Any:
        return self._route(name, version).base.tokenizer

    def chat_prompt(self, name: str, messages: list[dict[str, str]], version: int = 0) -> list[int]:
        from flywheel.inference.llm.loading import render_chat

        return render_chat(self.tokenizer(name, version), messages, model_name=name)

    def encode(self, name: str, text: str, version: int = 0) -> list[int]:
        from flywheel.inference.llm.loading import encode_prompt

        return encode_prompt(self.tokenizer(name, version), text)

    def submit(self, name: str, *, messages: list[dict[str, str]] | None = None, prompt: str | None = None,
               prompt_ids: list[int] | None = None, params: SamplingParams | None = None,
               version: int = 0) -> Generation:
        """Queue a generation for `name` from chat `messages`, a plain `prompt` or `prompt_ids` (exactly one);
        `version`: a pinned version (`pin` it first; 0: the champion)."""
        route = self._route(name, version)
        given = [x is not None for x in (messages, prompt, prompt_ids)]
        if sum(given) != 1:
            raise InvalidArgument("give exactly one of messages, prompt or prompt_ids")
        try:
            if messages is not None:
                ids = self.chat_prompt(name, messages, version)
            elif prompt is not None:
                ids = self.encode(name, prompt, version)
            else:
                ids = [int(i) for i in prompt_ids or []]
            stream = route.base.engine.submit(ids, params or SamplingParams(), adapter=route.adapter)
        except Exception as exc:
            GENERATIONS.labels(name, type(exc).__name__).inc()
            raise
        GENERATIONS.labels(name, "submitted").inc()
        pin = self.pins.get((name, version)) if version else None
        if pin is None or pin.route is not route:
            return Generation(route.served, stream, ids)
        pin.running += 1
        pin.last_used = time.monotonic()

        def done() -> None:
            pin.running -= 1
            pin.last_used = time.monotonic()
        return Generation(route.served, stream, ids, on_done=done)

    async def generate(self, name: str, **kwargs: Any) -> Completion:
        return await self.submit(name, **kwargs).collect()

    def engine(self, name: str, version: int = 0) -> GenerationEngine:
        """The engine serving `name` (its counters, for tests and metrics)."""
        return self._route(name, version).base.engine

    # -- pinned versions (evaluation traffic) -------------------------------------------------------------

    async def pin(self, name: str, version: int) -> ServedModel:
        """Serve `name` v`version` next to the champion (see the module docstring): loaded on the first call,
        which concurrent calls for the same version share. NotFound for a version the registry does not have,
        InvalidArgument for one that is not an LLM or adapter, FailedPrecondition for an adapter whose base
        cannot take it."""
        if version <= 0:
            raise InvalidArgument(f"version {version}: a pinned version is a positive registry version")
        champion = self.routes.get(name)
        if champion is not None and champion.served.version == version:
            return champion.served
        key = (name, version)
        pin = self.pins.get(key)
        if pin is not None:
            pin.last_used = time.monotonic()
            return pin.route.served
        task = self._pin_loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load_pin(name, version), name=f"llm-pin-{name}-{version}")
            self._pin_loads[key] = task
            task.add_done_callback(lambda t: self._pin_loads.pop(key, None) if self._pin_loads.get(key) is t
                                   else None)
        # The caller may give up (its deadline): the load goes on for the next request.
        return await asyncio.shield(task)

    async def _load_pin(self, name: str, version: int) -> ServedModel:
        found = await self.registry.get_version(name, version)
        if found is None:
            raise NotFound(f"model {name!r} has no version {version} in the registry")
        if found.kind not in LLM_KINDS:
            kind = common_pb2.ModelKind.Name(found.kind)  # type: ignore[arg-type]
            raise InvalidArgument(f"model {name!r} v{version} is {kind}: only LLM and LoRA adapter versions can "
                                  "be pinned for generation")
        champion = self.routes.get(name)
        if champion is not None and champion.served.version == version:  # promoted while we asked
            return champion.served
        user = f"{name}@pin-v{version}"
        base: _Base | None = None
        try:
            if found.kind == common_pb2.MODEL_KIND_LLM:
                base = await self._base(name, version, found)
                route = _Route(self._served(name, version, BASE, base), base, None)
            else:
                base = await self._adapter_base(name, found)
                directory = await self._fetch(found)
                await asyncio.to_thread(check_adapter_dir, directory, f"{name} v{version}")
                adapter = "pin_" + _engine_adapter_name(name, version)
                await base.engine.load_adapter(adapter, str(directory))
                route = _Route(self._served(name, version, ADAPTER, base), base, adapter)
        except BaseException:
            PIN_EVENTS.labels(name, "failed").inc()
            if base is not None and not base.users:  # loaded for this pin only
                self._drain_later(base)
            raise
        base.users.add(user)
        try:
            await self._make_room(keep=(name, version))
        except BaseException:  # no room: what was loaded for this pin goes again
            PIN_EVENTS.labels(name, "failed").inc()
            if route.adapter is not None:
                await base.engine.unload_adapter(route.adapter)
            base.users.discard(user)
            if not base.users:
                self._drain_later(base)
            raise
        self.pins[(name, version)] = _Pin(route, user)
        PIN_EVENTS.labels(name, "loaded").inc()
        self._count_pins(name)
        self._start_reaper()
        log.info("LLM version pinned", extra={"model": name, "version": version, "kind": route.served.kind,
                                              "base": f"{base.name} v{base.version}"})
        return route.served

    async def _make_room(self, keep: tuple[str, int]) -> None:
        """Unload the least recently used idle pins until one more fits in `max_pinned`."""
        while len(self.pins) >= max(self.settings.max_pinned, 1):
            idle = [(p.last_used, k) for k, p in self.pins.items() if p.running == 0 and k != keep]
            if not idle:
                raise Unavailable(f"{len(self.pins)} pinned versions are answering requests (llm_max_pinned "
                                  f"{self.settings.max_pinned}); retry when one is done")
            await self._unpin(min(idle)[1], "lru")

    async def _unpin(self, key: tuple[str, int], reason: str) -> None:
        pin = self.pins.pop(key, None)
        if pin is None:
            return
        route = pin.route
        if route.adapter is not None:
            await route.base.engine.unload_adapter(route.adapter)  # deleted once its running requests end
        route.base.users.discard(pin.user)
        if not route.base.users:
            self._drain_later(route.base)
        PIN_EVENTS.labels(key[0], reason).inc()
        self._count_pins(key[0])
        log.info("LLM pinned version unloaded", extra={"model": key[0], "version": key[1], "reason": reason})

    def _count_pins(self, name: str) -> None:
        PINNED.labels(name).set(sum(1 for n, _ in self.pins if n == name))

    def _start_reaper(self) -> None:
        if self._reaper is not None and not self._reaper.done():
            return
        self._reaper = asyncio.create_task(self._reap_idle(), name="llm-pins-idle")
        self._background.add(self._reaper)
        self._reaper.add_done_callback(self._background.discard)

    async def _reap_idle(self) -> None:
        """Unload pins idle for `pinned_idle_s` (never one with running requests); ends with the last pin."""
        idle_s = self.settings.pinned_idle_s
        while self.pins:
            await asyncio.sleep(min(max(idle_s / 4, 0.05), 5.0))
            now = time.monotonic()
            for key, pin in list(self.pins.items()):
                if pin.running == 0 and now - pin.last_used >= idle_s:
                    try:
                        await self._unpin(key, "idle")
                    except Exception as exc:
                        log.warning("pinned version not unloaded", extra={"model": key[0], "version": key[1],
                                                                          "error": repr(exc)})

    # -- lifecycle --------------------------------------------------------------------------------

    def schedule(self, name: str) -> None:
        self.known.add(name)
        task = self._pending.get(name)
        if task is not None and not task.done():
            self._again.add(name)
            return
        self._pending[name] = asyncio.create_task(self._reconcile_loop(name), name=f"llm-reconcile-{name}")

    async def wait_idle(self) -> None:
        while any(not t.done() for t in self._pending.values()):
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    async def stop(self) -> None:
        await cancel_and_wait([*self._pending.values(), *self._background, *self._pin_loads.values()])
        self.routes.clear()
        self.pins.clear()
        bases, self.bases = list(self.bases.values()), {}
        for base in bases:
            await base.engine.aclose()

    async def _reconcile_loop(self, name: str) -> None:
        backoff = 2.0
        while True:
            self._again.discard(name)
            try:
                await self.reconcile(name)
                self.load_errors.pop(name, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.load_errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("LLM reconcile failed, retrying", extra={"model": name, "error": repr(exc),
                                                                     "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                self._again.add(name)
            if name not in self._again:
                return

    async def reconcile(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            found = await self.registry.get_version(name, alias="champion")
            current = self.routes.get(name)
            if found is None or found.kind not in LLM_KINDS:
                if current is not None:
                    await self._unserve(name, current)
                return
            if current is not None and current.served.version == found.version:
                return
            if found.kind == common_pb2.MODEL_KIND_LLM:
                base = await self._base(name, found.version, found)
                route = _Route(self._served(name, found.version, BASE, base), base, None)
            else:
                base = await self._adapter_base(name, found)
                directory = await self._fetch(found)
                await asyncio.to_thread(check_adapter_dir, directory, f"{name} v{found.version}")
                adapter = _engine_adapter_name(name, found.version)
                await base.engine.load_adapter(adapter, str(directory))
                route = _Route(self._served(name, found.version, ADAPTER, base), base, adapter)
            base.users.add(name)
            self.routes[name] = route  # the swap: new requests take the new version
            LOADED.labels(name).set(found.version)
            log.info("LLM version live", extra={"model": name, "version": found.version, "kind": route.served.kind,
                                                "base": f"{base.name} v{base.version}",
                                                "previous": current.served.version if current else 0})
            if current is not None:
                await self._release(name, current, keep=route)

    async def _adapter_base(self, name: str, found: Any) -> _Base:
        """The loaded base an adapter version goes on (loaded if needed), per its lineage's base_model."""
        ref = found.lineage.base_model
        if not ref.name or not ref.version:
            raise FailedPrecondition(f"adapter {name} v{found.version} has no base model in its lineage "
                                     "(lineage.base_model must name the base version)")
        base = await self._base(ref.name, ref.version)
        if base.quantization != "none":
            raise FailedPrecondition(f"adapter {name} v{found.version} needs base {ref.name} v{ref.version}, "
                                     f"which is served {base.quantization}-quantized; LoRA adapters need the "
                                     "float base (set its quantization to none)")
        return base

    def _served(self, name: str, version: int, kind: str, base: _Base) -> ServedModel:
        return ServedModel(name=name, version=version, kind=kind, base_name=base.name, base_version=base.version,
                           context_length=base.engine.max_context, quantization=base.quantization,
                           loaded_at=time.time())

    async def _unserve(self, name: str, current: _Route) -> None:
        del self.routes[name]
        LOADED.labels(name).set(0)
        log.info("LLM no longer served", extra={"model": name, "version": current.served.version})
        await self._release(name, current, keep=None)

    async def _release(self, name: str, old: _Route, keep: _Route | None) -> None:
        """Free what the replaced route held: its adapter (after its requests), its base if unused."""
        if old.adapter is not None and (keep is None or keep.adapter != old.adapter or keep.base is not old.base):
            await old.base.engine.unload_adapter(old.adapter)
        if keep is None or keep.base is not old.base:
            old.base.users.discard(name)
            if not old.base.users:
                self._drain_later(old.base)

    def _drain_later(self, base: _Base) -> None:
        key = (base.name, base.version)
        if self.bases.get(key) is base:
            del self.bases[key]

        async def drain() -> None:
            await asyncio.to_thread(base.engine.drain)  # its running requests finish first
            await base.engine.aclose()
            log.info("LLM base unloaded", extra={"model": base.name, "version": base.version})

        task = asyncio.create_task(drain(), name=f"llm-drain-{base.name}-{base.version}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _base(self, name: str, version: int, found: Any = None) -> _Base:
        key = (name, version)
        async with self._base_locks.setdefault(key, asyncio.Lock()):
            base = self.bases.get(key)
            if base is not None:
                return base
            if found is None:
                found = await self.registry.get_version(name, version)
                if found is None:
                    raise FailedPrecondition(f"base model {name} v{version} is not in the registry")
            if found.kind != common_pb2.MODEL_KIND_LLM:
                raise FailedPrecondition(f"{name} v{version} is not an LLM (kind "
                                         f"{common_pb2.ModelKind.Name(found.kind)})")  # type: ignore[arg-type]
            directory = await self._fetch(found)
            quantization = self.settings.quantization.get(name, "none")
            started = time.perf_counter()
            engine = await asyncio.to_thread(self._start_engine, directory, quantization, f"{name}-v{version}")
            base = _Base(name, version, engine, quantization)
            self.bases[key] = base
            log.info("LLM base loaded", extra={"model": name, "version": version, "quantization": quantization,
                                               "load_s": round(time.perf_counter() - started, 2)})
            return base

    def _start_engine(self, directory: Path, quantization: str, name: str) -> GenerationEngine:
        from flywheel.inference.llm.engine import GenerationEngine
        from flywheel.inference.llm.loading import load_model_dir

        model, tokenizer = load_model_dir(directory, quantize=quantization)
        s = self.settings
        engine = GenerationEngine(model, tokenizer, name=name, max_batch=s.max_batch, max_queue=s.max_queue,
                                  max_context=s.max_context, max_tokens_cap=s.max_tokens,
                                  prefix_cache_tokens=s.prefix_cache_tokens, min_prefix_tokens=s.min_prefix_tokens)
        engine.start()
        return engine

    async def _fetch(self, version: Any) -> Path:
        """The version's directory in the content-addressed cache (downloaded and unpacked once)."""
        root = self.settings.cache_dir
        sha = version.artifact.sha256
        if sha and (hit := cached(sha, root)) is not None:
            return hit
        root.mkdir(parents=True, exist_ok=True)
        out = await asyncio.to_thread(tempfile.NamedTemporaryFile, dir=root, prefix=".download-", delete=False)
        spool = Path(out.name)
        try:
            try:
                if hasattr(self.registry, "open_download"):  # streamed to disk: a base is ~0.5 GB
                    async with self.registry.open_download(version.model_name, version.version) as download:
                        async for chunk in download.chunks():
                            await asyncio.to_thread(out.write, chunk)
                else:
                    await asyncio.to_thread(out.write, await self.registry.download(version.model_name,
                                                                                    version.version))
            finally:
                await asyncio.to_thread(out.close)
            return await asyncio.to_thread(unpack, spool, root, sha256=sha)
        finally:
            await asyncio.to_thread(spool.unlink, True)
