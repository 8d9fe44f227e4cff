"""The LLM service's lifecycle against an in-memory registry: a base follows its champion (a new version
is loaded, the old one drained and freed), adapters load onto their base version and are refused on an
int8 base or when they are not LoRA directories, and nothing is served without a champion."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, NotFound
from flywheel.common.model_dirs import pack_dir
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.llm.service import LLMService, LLMSettings
from flywheel.inference.testing import build_tiny_adapter, build_tiny_llm
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

LLM, ADAPTER = common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER
CHAT = [{"role": "user", "content": "hello world"}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


class MemoryRegistry(ModelRegistry):
    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], tuple[reg.ModelVersion, bytes]] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        self.downloads = 0

    def add(self, name: str, kind: int, data: bytes, base: tuple[str, int] | None = None) -> int:
        version = 1 + max([v for (n, v) in self.versions if n == name], default=0)
        lineage = common_pb2.Lineage(base_model=common_pb2.ModelRef(name=base[0], version=base[1])) if base else None
        mv = reg.ModelVersion(model_name=name, version=version, kind=kind, lineage=lineage,
                              artifact=reg.Artifact(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)))
        self.versions[(name, version)] = (mv, data)
        return version

    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        if alias:
            version = self.aliases.get((model_name, alias), 0)
        found = self.versions.get((model_name, version))
        return found[0] if found else None

    async def models_with_alias(self, alias: str) -> list[str]:
        return [n for (n, a) in self.aliases if a == alias]

    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        return None

    async def register(self, spec: Any, artifact: Any, *, on_progress: Any = None) -> reg.ModelVersion:
        raise AssertionError("serving LLMs never registers a version")

    async def download(self, model_name: str, version: int = 0, alias: str = "") -> bytes:
        self.downloads += 1
        return self.versions[(model_name, version)][1]

    async def record_lineage(self, model_name: str, version: int, lineage: Any) -> reg.ModelVersion:
        raise AssertionError("serving LLMs never records lineage")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("service")
    base = build_tiny_llm(root / "base", seed=0)
    other = build_tiny_llm(root / "other", seed=9)
    bad = root / "not-lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    return {"base": pack_dir(base), "base2": pack_dir(other), "lora": pack_dir(build_tiny_adapter(base, root / "a")),
            "bad": pack_dir(bad)}


async def reconciled(service: LLMService, registry: MemoryRegistry, name: str, version: int) -> None:
    if version:
        registry.aliases[(name, "champion")] = version
    else:
        registry.aliases.pop((name, "champion"), None)
    await service.reconcile(name)


async def test_bases_follow_their_champion_and_adapters_their_base(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = MemoryRegistry()
    service = LLMService(registry, LLMSettings(cache_dir=tmp_path / "cache", max_context=128))
    try:
        v1 = registry.add("base", LLM, artifacts["base"])
        await reconciled(service, registry, "base", v1)
        assert service.model("base").context_length == 128  # the setting caps the model's 256
        first = await service.generate("base", messages=CHAT, params=GREEDY)
        a1 = registry.add("lora", ADAPTER, artifacts["lora"], base=("base", v1))
        await reconciled(service, registry, "lora", a1)
        assert service.engine("lora") is service.engine("base")
        assert service.model("lora").base_version == v1
        assert (await service.generate("lora", messages=CHAT, params=GREEDY)).token_ids != first.token_ids

        # A new base champion: loaded beside v1, which the adapter still needs.
        v2 = registry.add("base", LLM, artifacts["base2"])
        await reconciled(service, registry, "base", v2)
        assert service.model("base").version == v2 and service.engine("base") is not service.engine("lora")
        assert set(service.bases) == {("base", v1), ("base", v2)}
        # The adapter goes: base v1 has no user left and is freed.
        await reconciled(service, registry, "lora", 0)
        with pytest.raises(NotFound):
            service.model("lora")
        assert set(service.bases) == {("base", v2)}
        await service.wait_idle()
        downloads = registry.downloads
        await reconciled(service, registry, "base", v2)  # nothing changed: nothing downloaded or loaded
        assert registry.downloads == downloads
    finally:
        await service.stop()


async def test_adapters_are_refused_on_an_int8_base_or_when_not_lora(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = MemoryRegistry()
    service = LLMService(registry, LLMSettings(cache_dir=tmp_path / "cache", quantization={"q": "int8"}))
    try:
        q = registry.add("q", LLM, artifacts["base"])
        await reconciled(service, registry, "q", q)
        assert service.model("q").quantization == "int8"
        a = registry.add("qa", ADAPTER, artifacts["lora"], base=("q", q))
        with pytest.raises(FailedPrecondition, match="int8-quantized"):
            await reconciled(service, registry, "qa", a)
        b = registry.add("b", LLM, artifacts["base"])
        await reconciled(service, registry, "b", b)
        bad = registry.add("bad", ADAPTER, artifacts["bad"], base=("b", b))
        with pytest.raises(FailedPrecondition, match="only LORA"):
            await reconciled(service, registry, "bad", bad)
        orphan = registry.add("orphan", ADAPTER, artifacts["lora"])
        with pytest.raises(FailedPrecondition, match="no base model in its lineage"):
            await reconciled(service, registry, "orphan", orphan)
        assert [m.name for m in service.models()] == ["b", "q"]
        assert service.engine("b").adapters == {}
    finally:
        await service.stop()


async def test_pinned_versions_load_on_demand_next_to_the_champion(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An adapter version of the served name (the fine-tuner's candidate) is pinned onto the champion's engine, a
    student LLM version gets its own; concurrent first requests share one load; at most max_pinned stay (LRU)."""
    import asyncio

    from flywheel.common.errors import InvalidArgument, Unavailable

    registry = MemoryRegistry()
    service = LLMService(registry, LLMSettings(cache_dir=tmp_path / "cache", max_pinned=1, pinned_idle_s=3600))
    try:
        v1 = registry.add("m", LLM, artifacts["base"])
        await reconciled(service, registry, "m", v1)
        champion = await service.generate("m", messages=CHAT, params=GREEDY)
        v2 = registry.add("m", ADAPTER, artifacts["lora"], base=("m", v1))
        v3 = registry.add("m", LLM, artifacts["base2"])  # a distilled student: another base
        p = registry.add("p", common_pb2.MODEL_KIND_PREDICTIVE, b"x")
        with pytest.raises(Unavailable, match="not pinned"):
            service.submit("m", messages=CHAT, params=GREEDY, version=v2)
        downloads = registry.downloads
        pinned = await asyncio.gather(*(service.pin("m", v2) for _ in range(3)))
        assert registry.downloads == downloads + 1 and {s.version for s in pinned} == {v2}
        assert pinned[0].kind == "adapter" and service.engine("m", v2) is service.engine("m")
        answer = await service.generate("m", messages=CHAT, params=GREEDY, version=v2)
        assert answer.token_ids != champion.token_ids
        assert (await service.generate("m", messages=CHAT, params=GREEDY)).token_ids == champion.token_ids
        assert (await service.pin("m", v1)).version == v1 and service.model("m", v1) is service.model("m")

        # The student replaces the adapter (max_pinned 1): the adapter is unloaded, the champion's base stays.
        generation = service.submit("m", messages=CHAT, params=GREEDY, version=v2)
        with pytest.raises(Unavailable, match="answering requests"):
            await service.pin("m", v3)  # the only pin is busy: never unloaded under a request
        assert ("m", v3) not in service.bases  # the student loaded for nothing is freed again
        await generation.collect()
        student = await service.pin("m", v3)
        assert student.kind == "llm" and service.engine("m", v3) is not service.engine("m")
        assert [s.version for s in service.pinned()] == [v3]
        assert service.engine("m").adapters == {} and ("m", v1) in service.bases
        with pytest.raises(NotFound, match="'m' has no version 99"):
            await service.pin("m", 99)
        with pytest.raises(InvalidArgument, match="MODEL_KIND_PREDICTIVE"):
            await service.pin("p", p)
    finally:
        await service.stop()


async def test_an_idle_pin_is_unloaded_and_its_base_freed(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = MemoryRegistry()
    service = LLMService(registry, LLMSettings(cache_dir=tmp_path / "cache", pinned_idle_s=0.2))
    try:
        v1 = registry.add("s", LLM, artifacts["base"])
        v2 = registry.add("s", LLM, artifacts["base2"])
        await reconciled(service, registry, "s", v1)
        await service.pin("s", v2)
        stream = service.submit("s", messages=CHAT, params=SamplingParams(temperature=0.0, max_tokens=64),
                                version=v2)
        first = await anext(aiter(stream))  # running: not unloaded however long it takes
        assert first is not None and service.pins[("s", v2)].running == 1
        async with stream:
            async for _ in stream:
                pass
        assert service.pins[("s", v2)].running == 0

        async def gone() -> bool:
            return ("s", v2) not in service.pins and ("s", v2) not in service.bases
        from tests import polling

        await polling.eventually(gone, timeout=30, what="the idle pin unloaded")
        assert [m.version for m in service.models()] == [v1]
    finally:
        await service.stop()
