"""Which detectors version serves checks.

The registry is the source of truth: the guard serves the `champion` of its detectors model (setting
`detectors_model`, default guard-detectors); while the model has none, the version the guard
bootstrapped. Bootstrapping happens on the first start when the model has no version at all: the
detectors the guard ships (trained by `training.py` on the shipped data) -- or those of the directory
`bootstrap_dir` names -- are registered as version 1 (kind predictive, framework flywheel-guard, tagged
bootstrap=shipped-data, held-out metrics recorded), so the loop can retrain and promote later versions
like any model. Training at start was measured and rejected: 14 s on a quiet 2-core machine, ~60 s on
a busy one, which is longer than `make run` waits for a service; loading the shipped artifact takes
well under a second. With `bootstrap_train` the guard trains instead (e.g. on a changed data set).
A promotion (models.promoted) swaps the new champion in: checks that start after the swap use it,
running ones finish on the old one.

Loading a version: its artifact (a tar of the detectors directory) is downloaded, unpacked into the
content-addressed model cache and read with numpy (well under a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from prometheus_client import Gauge

from flywheel.common import model_dirs
from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from flywheel.guard import detectors as det
from flywheel.guard.checks import DetectorSource
from flywheel.guard.detectors import Detectors
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

FRAMEWORK = "flywheel-guard"
CHAMPION = "champion"
BOOTSTRAP_TAG = "bootstrap"
BOOTSTRAP_VALUE = "shipped-data"
UNAVAILABLE_RETRY_S = 1.0

SERVED_VERSION = Gauge("flywheel_guard_detectors_version", "The detectors version serving checks (0 = none).")


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The held-out metrics as registry metrics (e.g. injection.precision, fpr.any, groundedness.recall)."""
    held = metrics.get("held_out", {})
    out: dict[str, float] = {}
    for head, values in held.get("heads", {}).items():
        for key in ("precision", "recall", "f1"):
            out[f"{head}.{key}"] = float(values[key])
    for head, value in held.get("benign_false_positive_rate", {}).items():
        out[f"benign_fpr.{head}"] = float(value)
    for key in ("precision", "recall", "f1"):
        if key in held.get("groundedness", {}):
            out[f"groundedness.{key}"] = float(held["groundedness"][key])
    return out


def version_spec(model_name: str, detectors: Detectors, description: str,
                 tags: dict[str, str]) -> reg.ModelVersionSpec:
    return reg.ModelVersionSpec(
        model_name=model_name, kind=common_pb2.MODEL_KIND_PREDICTIVE, framework=FRAMEWORK,
        description=description, tags={**tags, "data_sha256": str(detectors.metrics.get("data_sha256", ""))},
        metrics=flat_metrics(detectors.metrics), filename=f"{model_name}.tar")


async def register(registry: ModelRegistry, model_name: str, detectors: Detectors, *, description: str,
                   tags: dict[str, str]) -> reg.ModelVersion:
    """Register `detectors` as a new version of `model_name`."""
    with tempfile.TemporaryDirectory(prefix="guard-detectors-") as tmp:
        folder = detectors.save(Path(tmp) / "detectors")
        data = await asyncio.to_thread(model_dirs.pack_dir, folder)
    return await registry.register(version_spec(model_name, detectors, description, tags), data)


class DetectorCatalog(DetectorSource):
    def __init__(self, registry: ModelRegistry, *, model_name: str, cache: Path, bootstrap: bool = True,
                 bootstrap_dir: Path | None = None, bootstrap_train: bool = False,
                 bootstrap_lock: Callable[[], AbstractAsyncContextManager[object]] | None = None,
                 on_serving: Callable[[bool], None] | None = None) -> None:
        self.registry = registry
        self.model_name = model_name
        self.cache = Path(cache)
        self.bootstrap = bootstrap
        self.bootstrap_dir = bootstrap_dir
        self.bootstrap_train = bootstrap_train
        self.bootstrap_lock = bootstrap_lock
        self.on_serving = on_serving
        self.serving: Detectors | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._again = False

    def detectors(self) -> Detectors:
        serving = self.serving
        if serving is None:
            raise Unavailable(f"the guard's detectors ({self.model_name}) are not loaded yet; retry shortly")
        return serving

    async def start(self) -> None:
        self._kick()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.registry.close()

    def on_promoted(self, model_name: str, alias: str) -> None:
        if model_name == self.model_name and alias == CHAMPION:
            self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._reconcile_loop(), name="guard-detectors")
        else:
            self._again = True

    async def _reconcile_loop(self) -> None:
        backoff = 1.0
        while True:
            self._again = False
            try:
                await self.reconcile()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = UNAVAILABLE_RETRY_S if isinstance(exc, Unavailable) else backoff
                log.warning("guard detectors not served yet; retrying", extra={
                    "model": self.model_name, "error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay})
                await asyncio.sleep(delay)
                if not isinstance(exc, Unavailable):
                    backoff = min(backoff * 2, 60.0)
                self._again = True
            if not self._again:
                return

    async def reconcile(self) -> None:
        found = await self.registry.get_version(self.model_name, alias=CHAMPION)
        if found is None:
            found = await self._without_champion()
        if found.framework != FRAMEWORK:
            raise FailedPrecondition(f"{self.model_name} v{found.version} is a {found.framework!r} model; the guard "
                                     f"loads {FRAMEWORK!r} detectors")
        current = self.serving
        if current is not None and current.version == found.version:
            return
        loaded = await self._load(found)
        self.serving = loaded  # the swap: checks that start from now on use it
        SERVED_VERSION.set(found.version)
        self.ready.set()
        if self.on_serving is not None:
            self.on_serving(True)
        log.info("guard detectors serving", extra={"model": self.model_name, "version": found.version,
                                                   "previous": current.version if current else 0})

    async def _without_champion(self) -> reg.ModelVersion:
        found = await self.registry.find_by_tag(self.model_name, BOOTSTRAP_TAG, BOOTSTRAP_VALUE)
        if found is not None:
            return found
        if not self.bootstrap:
            raise FailedPrecondition(f"model {self.model_name!r} has no champion and bootstrapping is off "
                                     "(FLYWHEEL_GUARD_BOOTSTRAP): train and register one (flywheel guard train)")
        lock = self.bootstrap_lock() if self.bootstrap_lock is not None else contextlib.nullcontext()
        async with lock:
            found = await self.registry.find_by_tag(self.model_name, BOOTSTRAP_TAG, BOOTSTRAP_VALUE)
            if found is not None:
                return found
            if await self.registry.get_version(self.model_name, 1) is not None:
                raise FailedPrecondition(f"model {self.model_name!r} has versions but no champion: promote one "
                                         f"(flywheel registry promote {self.model_name} N)")
            return await self._register_shipped()

    async def _register_shipped(self) -> reg.ModelVersion:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.bootstrap_train:
            from flywheel.guard import training  # scikit-learn only when training

            detectors = await asyncio.to_thread(training.train)
            how = "trained on the shipped data at the first start"
        else:
            source = self.bootstrap_dir or det.SHIPPED_DIR
            detectors = await asyncio.to_thread(det.load, source)
            how = "shipped with the guard" if self.bootstrap_dir is None else f"from {source}"
        trained = loop.time()
        found = await register(self.registry, self.model_name, detectors, tags={BOOTSTRAP_TAG: BOOTSTRAP_VALUE},
                               description=f"guard detectors {how}; registered by the guard on its first start")
        log.info("guard detectors bootstrapped", extra={"model": self.model_name, "version": found.version,
                                                        "how": how, "train_s": round(trained - started, 2),
                                                        "register_s": round(loop.time() - trained, 2)})
        return found

    async def _load(self, found: reg.ModelVersion) -> Detectors:
        sha256 = found.artifact.sha256
        if not sha256:
            raise FailedPrecondition(f"{self.model_name} v{found.version} has no artifact sha256")
        folder = model_dirs.cached(sha256, self.cache)
        if folder is None:
            data = await self.registry.download(self.model_name, found.version)
            try:
                folder = await asyncio.to_thread(model_dirs.unpack, data, self.cache, sha256=sha256)
            except InvalidArgument as exc:
                raise FailedPrecondition(f"{self.model_name} v{found.version}: not a detectors tar: {exc}") from exc
        try:
            return await asyncio.to_thread(det.load, folder, name=self.model_name, version=found.version)
        except (ValueError, OSError) as exc:
            raise FailedPrecondition(f"{self.model_name} v{found.version} does not load as guard detectors: "
                                     f"{exc}") from exc
