"""Which base model an application's adapter is trained on, against an in-memory registry: the settings'
mapping, the model that answered its reviews, the model of that name; an LLM champion is the base, an adapter
champion names its base in lineage; anything else is a clear error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, NotFound
from flywheel.finetuner.models import BaseModels
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

LLM, ADAPTER = common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER
PREDICTIVE = common_pb2.MODEL_KIND_PREDICTIVE


class MemoryRegistry(ModelRegistry):
    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], reg.ModelVersion] = {}
        self.champions: dict[str, int] = {}

    def add(self, name: str, version: int, kind: int, *, champion: bool = False,
            base: tuple[str, int] | None = None) -> None:
        mv = reg.ModelVersion(model_name=name, version=version, kind=kind)  # type: ignore[arg-type]
        if base:
            mv.lineage.base_model.name, mv.lineage.base_model.version = base
        self.versions[(name, version)] = mv
        if champion:
            self.champions[name] = version

    async def get_version(self, model_name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        if alias:
            version = self.champions.get(model_name, 0)
        return self.versions.get((model_name, version))

    async def models_with_alias(self, alias: str) -> list[str]:
        raise AssertionError("not used")

    async def find_by_tag(self, model_name: str, key: str, value: str) -> reg.ModelVersion | None:
        raise AssertionError("not used")

    async def register(self, spec: Any, artifact: Any, *, on_progress: Any = None) -> reg.ModelVersion:
        raise AssertionError("not used")

    async def download(self, model_name: str, version: int = 0, alias: str = "") -> bytes:
        raise AssertionError("not used")

    async def record_lineage(self, model_name: str, version: int, lineage: Any) -> reg.ModelVersion:
        raise AssertionError("not used")


def models(registry: MemoryRegistry, mapping: dict[str, str] | None = None, answered_by: str = "") -> BaseModels:
    async def latest(_: str) -> str:
        return answered_by

    fn: Callable[[str], Any] = latest
    return BaseModels(registry, Path("/nonexistent"), mapping or {}, fn)


async def test_an_llm_champion_is_the_base() -> None:
    registry = MemoryRegistry()
    registry.add("smol", 1, LLM, champion=True)
    base = await models(registry).resolve("smol")
    assert (base.model_name, base.parent_version, base.base.version, base.ref) == ("smol", 1, 1, "smol@v1")


async def test_an_adapter_champion_names_its_base_and_new_adapters_train_on_it() -> None:
    registry = MemoryRegistry()
    registry.add("smol", 1, LLM)
    registry.add("smol", 2, ADAPTER, champion=True, base=("smol", 1))
    base = await models(registry).resolve("smol")
    assert (base.model_name, base.parent_version, base.base.model_name, base.base.version) == ("smol", 2, "smol", 1)
    registry.add("smol", 3, ADAPTER, champion=True)  # no base in lineage
    with pytest.raises(FailedPrecondition, match="names no base model"):
        await models(registry).resolve("smol")


async def test_an_application_resolves_through_the_settings_then_its_reviews() -> None:
    registry = MemoryRegistry()
    registry.add("smol", 1, LLM, champion=True)
    assert (await models(registry, {"support": "smol"}).resolve("support")).model_name == "smol"
    assert (await models(registry, answered_by="smol").resolve("support")).model_name == "smol"
    with pytest.raises(NotFound, match="no application or model 'support'"):
        await models(registry).resolve("support")


async def test_other_kinds_and_missing_champions_are_clear_errors() -> None:
    registry = MemoryRegistry()
    registry.add("fraud", 1, PREDICTIVE, champion=True)
    with pytest.raises(FailedPrecondition, match=r"'fraud' is a predictive model .* the trainer's"):
        await models(registry).resolve("fraud")
    with pytest.raises(NotFound, match=r"model 'smol' \(of application 'support'\) has no champion"):
        await models(registry, {"support": "smol"}).resolve("support")
