"""The transport-free data plane: validation, routing, scoring and logging of OIP v2 requests.

The gRPC and REST front doors convert their wire formats to `InferRequest` and back from
`InferResponse` (see `convert.py`); everything else happens here. Errors are the libs' domain
errors (InvalidArgument, NotFound, Unavailable), mapped to statuses by each transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.common.errors import InvalidArgument, NotFound, Unavailable
from flywheel.common.events import new_hex_id
from flywheel.common.supervise import HealthBoard
from flywheel.inference.batching import Batcher
from flywheel.inference.config import Route
from flywheel.inference.features import FeatureClient, key_value, to_matrices
from flywheel.inference.metrics import METRICS
from flywheel.inference.model import LoadedModel
from flywheel.inference.predlog import PredictionLog, sampled, tensor_bytes
from flywheel.inference.stats import StatsSnapshot

log = logging.getLogger(__name__)

NUMERIC, CATEGORICAL = "numeric", "categorical"
PROBABILITY, LABEL = "probability", "label"
OUTPUTS = (PROBABILITY, LABEL)
# Triton's names for a TorchScript model run by libtorch, which is what a flywheel.predictive/v1 artifact is.
PLATFORM, BACKEND = "pytorch_libtorch", "pytorch"
# Triton's protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = ("binary_tensor_data", "model_repository", "model_configuration", "statistics")
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    # np.ndarray (flat) for numeric datatypes, list[bytes] for BYTES.
    data: Any


@dataclass
class InferRequest:
    model_name: str
    inputs: list[InputTensor]
    model_version: str = ""
    id: str = ""
    outputs: list[str] | None = None  # None = all
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    arm: str


@dataclass
class TensorSpec:
    """A tensor a model takes or returns: OIP datatype and full shape (batch dimension first, -1 = any)."""

    name: str
    datatype: str
    shape: list[int]
    # True when a request may leave it out (the features when entity ids are given, or the reverse).
    optional: bool = False


@dataclass
class ModelConfig:
    """One loaded version's configuration (what Triton's model configuration extension reports)."""

    name: str
    version: str
    platform: str
    backend: str
    # Every loaded version of the model (champion, challenger).
    versions: list[int]
    # Most rows the adaptive batcher scores at once; 0 = batching off.
    max_batch_size: int
    max_batch_wait_us: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, str]


@dataclass
class IndexEntry:
    """One line of the repository index: a loaded (or loading) version, or a name with none ready."""

    name: str
    version: str  # "" for a name without a version
    state: str  # READY, LOADING or UNAVAILABLE
    reason: str = ""


@dataclass
class Prepared:
    """A request's model inputs, what the prediction log records of them and its entity ids."""

    numeric: np.ndarray
    categorical: np.ndarray
    inputs: list[InputTensor]
    entity_ids: list[str] = field(default_factory=list)


class ModelSlot:
    """What serves one model name: its champion and challenger; replaced by single assignments."""

    def __init__(self, name: str, route: Route, sample_rate: float) -> None:
        self.name = name
        self.route = route
        self.sample_rate = sample_rate
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        # Set by the repository: the version being downloaded and loaded (0 = none), and why the last
        # reconcile failed ("" once one succeeds).
        self.loading = 0
        self.load_error = ""

    def versions(self) -> list[LoadedModel]:
        return [m for m in (self.champion, self.challenger) if m is not None]

    def loaded(self) -> list[LoadedModel]:
        """The distinct loaded versions, oldest first (both aliases may hold the same one)."""
        by_version = {m.version: m for m in self.versions()}
        return [by_version[v] for v in sorted(by_version)]


def bucket(model: str, key: str) -> float:
    """A stable hash of the routing key in [0, 1): the same key always takes the same arm."""
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class DataPlane:
    def __init__(self, slots: dict[str, ModelSlot], predlog: PredictionLog, *, max_batch_size: int = 0,
                 max_batch_wait_ms: float = 2.0, server_name: str = "flywheel-inference",
                 server_version: str = "0.1.0", features: FeatureClient | None = None,
                 inline_max_rows: int = 64, inline_max_ms: float = 1.0) -> None:
        """`inline_max_rows` / `inline_max_ms`: a request (or batch) of at most that many rows is scored on
        the event loop itself when its version scores a row in at most that long (measured when loaded):
        the hop to a worker thread and back costs more than such a model. Others go to a worker thread."""
        self.slots = slots
        self.features = features
        self.predlog = predlog
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_ms / 1000
        self.inline_max_rows = inline_max_rows
        self.inline_max_s = inline_max_ms / 1000
        self.server_name = server_name
        self.server_version = server_version
        self.started = False
        # The process's components (its models.promoted consumer): OIP readiness follows them as
        # grpc.health.v1 does, so a load balancer using either probe drains the same way.
        self.components: HealthBoard | None = None
        self._background: set[asyncio.Task] = set()

    # -- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once started and while every component works: a model without a champion yet is reported
        by ModelReady, not here."""
        return self.started and (self.components is None or self.components.healthy)

    def slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            raise NotFound(f"unknown model {name!r}; served: {', '.join(sorted(self.slots))}")
        return slot

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The loaded version (champion when `version` is empty)."""
        slot = self.slot(name)
        if version:
            for m in slot.versions():
                if str(m.version) == version:
                    return m
            loaded = ", ".join(str(m.version) for m in slot.versions()) or "none"
            raise NotFound(f"model {name!r} version {version!r} is not loaded (loaded: {loaded})")
        champion = slot.champion
        if champion is None:
            raise Unavailable(f"model {name!r} is not ready: no champion version loaded yet")
        return champion

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.model(name, version)
        except Unavailable:
            return False
        return True

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": self.server_version, "extensions": list(EXTENSIONS)}

    @staticmethod
    def _signature(m: LoadedModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """(inputs, outputs) of a version. The entity id inputs, when the model's spec allows them,
        replace the feature tensors: then both kinds are optional."""
        by_ids = bool(m.feature_service and m.entity_keys)
        inputs = [TensorSpec(NUMERIC, "FP32", [-1, m.n_numeric], by_ids)]
        if m.n_categorical:
            inputs.append(TensorSpec(CATEGORICAL, "BYTES", [-1, m.n_categorical], by_ids))
        if by_ids:
            inputs += [TensorSpec(k, "BYTES", [-1], True) for k in m.entity_keys]
        return inputs, [TensorSpec(PROBABILITY, "FP32", [-1]), TensorSpec(LABEL, "INT64", [-1])]

    @staticmethod
    def _parameters(m: LoadedModel) -> dict[str, str]:
        return {"version": str(m.version), "format": m.metadata.get("format", ""),
                "numeric_features": ",".join(m.numeric_features),
                "categorical_features": ",".join(m.categorical_features), "threshold": str(m.threshold)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        m = self.model(name, version)
        inputs, outputs = self._signature(m)
        return {
            "name": name, "versions": [str(v.version) for v in self.slot(name).loaded()],
            "platform": PLATFORM,
            # The entity id alternative is not advertised here: metadata has no notion of optional inputs.
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in inputs
                       if t.name in (NUMERIC, CATEGORICAL)],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in outputs],
            "parameters": self._parameters(m),
        }

    # -- Triton's extensions: repository index, model configuration, statistics ------------------

    def repository_index(self, ready: bool = False) -> list[IndexEntry]:
        """Every served model: its loaded versions (READY), the version being loaded (LOADING), or,
        for a name without a champion, why not (UNAVAILABLE). `ready`: the READY versions only."""
        entries: list[IndexEntry] = []
        for name in sorted(self.slots):
            slot = self.slots[name]
            loaded = slot.loaded()
            entries += [IndexEntry(name, str(m.version), READY) for m in loaded]
            if ready:
                continue
            if slot.loading and all(m.version != slot.loading for m in loaded):
                entries.append(IndexEntry(name, str(slot.loading), LOADING,
                                          "downloading and warming it from the registry"))
            elif slot.champion is None:
                reason = (f"loading failed, retrying: {slot.load_error}" if slot.load_error
                          else "no version is the champion in the registry yet")
                entries.append(IndexEntry(name, "", UNAVAILABLE, reason))
        return entries

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """The configuration of a loaded version (the champion when `version` is empty)."""
        m = self.model(name, version)
        inputs, outputs = self._signature(m)
        return ModelConfig(
            name=name, version=str(m.version), platform=PLATFORM, backend=BACKEND,
            versions=[v.version for v in self.slot(name).loaded()], max_batch_size=self.max_batch_size,
            max_batch_wait_us=round(self.max_batch_wait_s * 1_000_000), inputs=inputs, outputs=outputs,
            parameters=self._parameters(m))

    def model_statistics(self, name: str = "", version: str = "") -> list[StatsSnapshot]:
        """Statistics of the loaded versions: of every model when `name` is empty, of every loaded
        version of `name` when `version` is empty. A version's counts start when it is loaded."""
        if not name:
            if version:
                raise InvalidArgument(f"version {version!r} given without a model name")
            models = [m for n in sorted(self.slots) for m in self.slots[n].loaded()]
        elif version:
            models = [self.model(name, version)]
        else:
            models = self.slot(name).loaded()
        return [m.stats.snapshot(m.name, str(m.version)) for m in models]

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        slot = self.slot(request.model_name)
        request_id = request.id or new_hex_id()
        try:
            primary, arm, shadow = self._route(slot, request, request_id)
        except Exception as exc:  # no version to charge it to: only the metric counts it
            METRICS.failed(slot.name, "none", type(exc).__name__)
            raise
        try:
            wanted = self._wanted_outputs(request)
            fetched: dict[tuple, tuple[list[str], list[Any]]] = {}  # shared with the shadow: one fetch
            prepared = await self._prepare(primary, request, fetched)
            inputs_done = time.perf_counter_ns()
            probability = await self._score(slot, primary, prepared.numeric, prepared.categorical)
            infer_done = time.perf_counter_ns()
        except Exception as exc:
            METRICS.failed(slot.name, "none", type(exc).__name__)
            primary.stats.failed(start, time.perf_counter_ns())
            raise
        latency = (infer_done - start) / 1e9
        METRICS.arm(slot.name, arm).observe(len(probability), latency)
        label = (probability >= primary.threshold).astype(np.int64)
        outputs = {PROBABILITY: OutputTensor(PROBABILITY, "FP32", [len(probability)], probability),
                   LABEL: OutputTensor(LABEL, "INT64", [len(label)], label)}
        primary.stats.succeeded(len(probability), start, inputs_done, infer_done, time.perf_counter_ns())
        logged = sampled(request_id, slot.sample_rate)
        inputs_log = self._inputs_log(prepared.inputs) if logged else None
        if logged:
            self._log(slot, request, request_id, primary, arm, inputs_log, probability, label, latency,
                      prepared.entity_ids)
        if shadow is not None:
            task = asyncio.create_task(self._shadow(slot, shadow, request, request_id, inputs_log, logged,
                                                    prepared.entity_ids, fetched))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return InferResponse(slot.name, str(primary.version), request_id, [outputs[n] for n in wanted], arm)

    def _route(self, slot: ModelSlot, request: InferRequest,
               request_id: str) -> tuple[LoadedModel, str, LoadedModel | None]:
        """(the version that answers, its arm, the version that scores in shadow or None).

        Read both references once: a swap during this request does not change what it uses.
        """
        champion, challenger = slot.champion, slot.challenger
        if request.model_version:
            chosen = self.model(slot.name, request.model_version)
            arm = "challenger" if challenger is not None and chosen is challenger else "champion"
            return chosen, arm, None
        if champion is None:
            raise Unavailable(f"model {slot.name!r} is not ready: no champion version loaded yet")
        mode = slot.route.mode
        if challenger is None or challenger.version == champion.version or mode == "champion":
            return champion, "champion", None
        if mode == "shadow":
            return champion, "champion", challenger
        key = request.parameters.get("routing_key") or request_id
        if bucket(slot.name, key) < slot.route.canary_share:
            return challenger, "challenger", None
        return champion, "champion", None

    def _wanted_outputs(self, request: InferRequest) -> list[str]:
        if request.outputs is None or not request.outputs:
            return list(OUTPUTS)
        for name in request.outputs:
            if name not in OUTPUTS:
                raise InvalidArgument(f"unknown output {name!r}; outputs: {', '.join(OUTPUTS)}")
        return list(request.outputs)

    async def _prepare(self, m: LoadedModel, request: InferRequest,
                       fetched: dict[tuple, tuple[list[str], list[Any]]]) -> Prepared:
        """The feature tensors of the request, or, when it carries entity ids instead (and the model's
        spec names a feature service and entity keys), the features fetched from the feature store."""
        names = {t.name for t in request.inputs}
        if NUMERIC in names or CATEGORICAL in names or not (m.feature_service and m.entity_keys):
            numeric, categorical = self._validate(m, request)
            return Prepared(numeric, categorical, list(request.inputs))
        return await self._fetch(m, request, fetched)

    def _takes(self, m: LoadedModel) -> str:
        tensors = ", ".join([NUMERIC, CATEGORICAL] if m.n_categorical else [NUMERIC])
        if m.feature_service and m.entity_keys:
            return f"{tensors} (or the entity ids {', '.join(m.entity_keys)})"
        return tensors

    async def _fetch(self, m: LoadedModel, request: InferRequest,
                     fetched: dict[tuple, tuple[list[str], list[Any]]]) -> Prepared:
        keys, types = m.entity_keys, m.entity_key_types
        by_name: dict[str, InputTensor] = {}
        for t in request.inputs:
            if t.name not in keys:
                raise InvalidArgument(f"unknown input {t.name!r}; model {m.name!r} takes {self._takes(m)}")
            if t.name in by_name:
                raise InvalidArgument(f"input {t.name!r} given twice")
            by_name[t.name] = t
        missing = [k for k in keys if k not in by_name]
        if missing:
            raise InvalidArgument(f"missing entity key input(s) {', '.join(repr(k) for k in missing)}; model "
                                  f"{m.name!r} scored by entity ids takes one BYTES input [N] per entity key: "
                                  f"{', '.join(keys)} (or the {NUMERIC}/{CATEGORICAL} tensors)")
        rows = 0
        for k in keys:
            t = by_name[k]
            if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
                raise InvalidArgument(f"input {k!r}: shape must be [N] or [N, 1], got {list(t.shape)}")
            if t.shape[0] <= 0:
                raise InvalidArgument(f"input {k!r}: empty batch (shape {list(t.shape)})")
            if t.datatype != "BYTES" and not t.datatype.startswith(("INT", "UINT")):
                raise InvalidArgument(f"input {k!r}: datatype must be BYTES (entity ids), got {t.datatype}")
            if len(t.data) != t.shape[0]:
                raise InvalidArgument(f"input {k!r}: shape {list(t.shape)} needs {t.shape[0]} values, "
                                      f"got {len(t.data)}")
            if rows and t.shape[0] != rows:
                raise InvalidArgument(f"input {k!r}: {t.shape[0]} rows but {keys[0]!r} has {rows}")
            rows = t.shape[0]
        ids = {k: [v if isinstance(v, bytes) else str(int(v)).encode() for v in by_name[k].data] for k in keys}
        cache_key = (m.feature_service, tuple(keys), tuple(sorted(types.items())))
        if cache_key not in fetched:
            if self.features is None:
                raise Unavailable(f"model {m.name!r} needs online features but no feature store is configured")
            entity_rows = [{k: key_value(ids[k][i], types.get(k, "string"), k) for k in keys} for i in range(rows)]
            fetched[cache_key] = await self.features.online(m.feature_service, entity_rows)
        names, feature_rows = fetched[cache_key]
        if len(feature_rows) != rows:
            raise Unavailable(f"the feature store returned {len(feature_rows)} rows for {rows} entity rows")
        numeric, strings = to_matrices(names, feature_rows, m.numeric_features, m.categorical_features,
                                       m.feature_service)
        if m.n_categorical:
            categorical = m.category_indices(strings, rows)
        else:
            categorical = np.zeros((rows, 0), dtype=np.int64)
        inputs = [InputTensor(NUMERIC, "FP32", [rows, m.n_numeric], numeric.reshape(-1).copy())]
        if m.n_categorical:
            inputs.append(InputTensor(CATEGORICAL, "BYTES", [rows, m.n_categorical], strings))
        inputs += [InputTensor(k, "BYTES", [rows], ids[k]) for k in keys]
        entity_ids = [v.decode("utf-8", errors="replace") for v in ids[keys[0]]]
        return Prepared(numeric, categorical, inputs, entity_ids)

    def _validate(self, m: LoadedModel, request: InferRequest) -> tuple[np.ndarray, np.ndarray]:
        by_name: dict[str, InputTensor] = {}
        expected = [NUMERIC, CATEGORICAL] if m.n_categorical else [NUMERIC]
        for t in request.inputs:
            if t.name not in expected:
                raise InvalidArgument(f"unknown input {t.name!r}; model {m.name!r} takes {self._takes(m)}")
            if t.name in by_name:
                raise InvalidArgument(f"input {t.name!r} given twice")
            by_name[t.name] = t
        missing = [n for n in expected if n not in by_name]
        if missing:
            raise InvalidArgument(f"missing input(s) {', '.join(repr(n) for n in missing)}; "
                                  f"model {m.name!r} takes {', '.join(expected)}")
        num = by_name[NUMERIC]
        if num.datatype != "FP32":
            raise InvalidArgument(f"input 'numeric': datatype must be FP32, got {num.datatype}")
        rows = self._check_shape(num, m.n_numeric)
        numeric = np.array(num.data, dtype=np.float32).reshape(rows, m.n_numeric)  # a writable copy
        # NaN (and +-inf) in numeric inputs mean "missing": the model imputes them (format contract).
        if m.n_categorical:
            cat = by_name[CATEGORICAL]
            cat_rows = self._check_shape(cat, m.n_categorical)
            if cat_rows != rows:
                raise InvalidArgument(f"input 'categorical': {cat_rows} rows but 'numeric' has {rows}")
            if cat.datatype == "BYTES":
                categorical = m.category_indices(cat.data, rows)
            elif cat.datatype == "INT64":  # vocabulary indices directly (any out-of-range index = other)
                categorical = np.asarray(cat.data, dtype=np.int64).reshape(rows, m.n_categorical)
            else:
                raise InvalidArgument(f"input 'categorical': datatype must be BYTES (or INT64 vocabulary "
                                      f"indices), got {cat.datatype}")
        else:
            categorical = np.zeros((rows, 0), dtype=np.int64)
        return numeric, categorical

    @staticmethod
    def _check_shape(t: InputTensor, width: int) -> int:
        if len(t.shape) != 2 or t.shape[1] != width:
            raise InvalidArgument(f"input {t.name!r}: shape must be [N, {width}], got {list(t.shape)}")
        rows = t.shape[0]
        if rows <= 0:
            raise InvalidArgument(f"input {t.name!r}: empty batch (shape {list(t.shape)})")
        if len(t.data) != rows * width:
            raise InvalidArgument(f"input {t.name!r}: shape {list(t.shape)} needs {rows * width} values, "
                                  f"got {len(t.data)}")
        return rows

    async def _score(self, slot: ModelSlot, m: LoadedModel, numeric: np.ndarray,
                     categorical: np.ndarray) -> np.ndarray:
        inline = self.inline_max_rows if m.row_seconds <= self.inline_max_s else 0
        if self.max_batch_size > 0:
            batcher = m.batcher
            if batcher is None:  # one batcher per loaded version, gone with it
                batcher = m.batcher = Batcher(m.score, max_rows=self.max_batch_size,
                                              max_wait_s=self.max_batch_wait_s, stats=m.stats, inline_rows=inline)
            return await batcher.submit(numeric, categorical)  # the batcher counts the executions
        begin = time.perf_counter_ns()
        if numeric.shape[0] <= inline:
            probability = m.score(numeric, categorical)
        else:
            probability = await asyncio.to_thread(m.score, numeric, categorical)
        m.stats.executed(1, 0, time.perf_counter_ns() - begin)
        return probability

    async def _shadow(self, slot: ModelSlot, m: LoadedModel, request: InferRequest, request_id: str,
                      inputs_log: list | None, logged: bool, entity_ids: list[str],
                      fetched: dict[tuple, tuple[list[str], list[Any]]]) -> None:
        start = time.perf_counter_ns()
        try:
            prepared = await self._prepare(m, request, fetched)
            inputs_done = time.perf_counter_ns()
            probability = await self._score(slot, m, prepared.numeric, prepared.categorical)
            infer_done = time.perf_counter_ns()
        except Exception as exc:  # a failing shadow never affects the caller
            m.stats.failed(start, time.perf_counter_ns())
            METRICS.failed(slot.name, "shadow", type(exc).__name__)
            log.warning("shadow scoring failed", extra={"model": slot.name, "version": m.version, "error": repr(exc)})
            return
        m.stats.succeeded(len(probability), start, inputs_done, infer_done, time.perf_counter_ns())
        METRICS.arm(slot.name, "shadow").observe(len(probability), (infer_done - start) / 1e9)
        if logged:
            try:
                label = (probability >= m.threshold).astype(np.int64)
                self._log(slot, request, request_id, m, "shadow", inputs_log, probability, label,
                          (infer_done - start) / 1e9, prepared.entity_ids or entity_ids)
            except Exception as exc:
                log.warning("shadow prediction log failed",
                            extra={"model": slot.name, "version": m.version, "error": repr(exc)})

    def _inputs_log(self, inputs: list[InputTensor]) -> list | None:
        if sum(len(t.data) for t in inputs) > self.predlog.max_input_values:
            return None
        return [tensor_bytes(t.name, t.datatype, t.data, list(t.shape)) for t in inputs]

    def _log(self, slot: ModelSlot, request: InferRequest, request_id: str, m: LoadedModel, arm: str,
             inputs: list | None, probability: np.ndarray, label: np.ndarray, latency: float,
             entity_ids: list[str]) -> None:
        self.predlog.log(
            request_id=request_id, model=slot.name, version=m.version, arm=arm, inputs=inputs,
            outputs=[tensor_bytes(PROBABILITY, "FP32", probability, [len(probability)]),
                     tensor_bytes(LABEL, "INT64", label, [len(label)])],
            latency_ms=latency * 1000, sample_rate=slot.sample_rate, parameters=dict(request.parameters),
            entity_ids=entity_ids)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
