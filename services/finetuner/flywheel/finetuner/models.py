"""Which base model an application's adapter is trained on, and getting that model's directory.

An application name resolves to a registry model: the `applications` setting (application -> model),
else the model that answered the application's newest reviewed example, else a registry model of that
name. That model's champion decides the base: an LLM version is the base itself; a LoRA adapter (an
earlier fine-tune) names its base in `lineage.base_model`, and the new adapter is trained on that base
again, on the whole dataset (adapters are not stacked). The adapter becomes a version of the model.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, NotFound
from flywheel.common.model_dirs import cached, unpack
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

CHAMPION = "champion"
LLM_KINDS = (common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER)


@dataclass(frozen=True)
class BaseModel:
    """Where an application's adapter goes (`model_name`) and what it is trained on."""

    model_name: str
    parent_version: int
    base: reg.ModelVersion

    @property
    def ref(self) -> str:
        return f"{self.base.model_name}@v{self.base.version}"


def kind_name(kind: int) -> str:
    return common_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower()  # type: ignore[arg-type]


class BaseModels:
    """Resolves applications to base models through the registry and keeps their directories."""

    def __init__(self, registry: ModelRegistry, cache_dir: Path, applications: Mapping[str, str],
                 latest_model: Callable[[str], Awaitable[str]]) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self.applications = dict(applications)
        self.latest_model = latest_model

    async def model_for(self, application: str) -> str:
        """The registry model an application's adapters are versions of; NotFound saying where it looked."""
        if application in self.applications:
            return self.applications[application]
        candidates = []
        answered_by = await self.latest_model(application)
        if answered_by and answered_by != application:
            candidates.append(answered_by)
        candidates.append(application)
        other_kind = ""
        for name in candidates:
            found = await self.registry.get_version(name, alias=CHAMPION)
            if found is not None and found.kind in LLM_KINDS:
                return name
            if found is not None and not other_kind:
                other_kind = name
        if other_kind:
            return other_kind  # a model of another kind: `resolve` says so
        raise NotFound(
            f"no application or model {application!r}: it is not in FLYWHEEL_FINETUNER_APPLICATIONS, no reviewed "
            f"answer names a registry model for it, and the registry has no model {application!r} with a champion "
            f"(register and promote the base LLM, e.g. `flywheel llm register-base --promote`)")

    async def resolve(self, application: str) -> BaseModel:
        name = await self.model_for(application)
        champion = await self.registry.get_version(name, alias=CHAMPION)
        if champion is None:
            raise NotFound(f"model {name!r} (of application {application!r}) has no champion in the registry: "
                           "promote its base LLM version first")
        if champion.kind == common_pb2.MODEL_KIND_LLM:
            return BaseModel(name, champion.version, champion)
        if champion.kind != common_pb2.MODEL_KIND_LORA_ADAPTER:
            raise FailedPrecondition(
                f"model {name!r} is a {kind_name(champion.kind)} model (champion v{champion.version}); the fine-tuner "
                "trains LoRA adapters of LLMs (kind llm). Predictive models are the trainer's")
        ref = champion.lineage.base_model
        if not ref.name or not ref.version:
            raise FailedPrecondition(f"the champion of {name!r} (v{champion.version}) is an adapter whose lineage "
                                     "names no base model (lineage.base_model)")
        base = await self.registry.get_version(ref.name, ref.version)
        if base is None or base.kind != common_pb2.MODEL_KIND_LLM:
            raise FailedPrecondition(f"the champion of {name!r} (v{champion.version}) names base {ref.name} "
                                     f"v{ref.version}, which is not an LLM version in the registry")
        return BaseModel(name, champion.version, base)

    async def directory(self, version: reg.ModelVersion) -> Path:
        """The version's model directory, downloaded and unpacked once into the content-addressed cache."""
        sha = version.artifact.sha256
        if sha and (hit := cached(sha, self.cache_dir)) is not None:
            return hit
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        out = await asyncio.to_thread(tempfile.NamedTemporaryFile, dir=self.cache_dir, prefix=".download-",
                                      delete=False)
        spool = Path(out.name)
        registry: Any = self.registry
        try:
            try:
                if hasattr(registry, "open_download"):  # streamed to disk: a base is ~0.5 GB
                    async with registry.open_download(version.model_name, version.version) as download:
                        async for chunk in download.chunks():
                            await asyncio.to_thread(out.write, chunk)
                else:
                    await asyncio.to_thread(out.write, await registry.download(version.model_name, version.version))
            finally:
                await asyncio.to_thread(out.close)
            return await asyncio.to_thread(unpack, spool, self.cache_dir, sha256=sha)
        finally:
            await asyncio.to_thread(spool.unlink, True)
