"""Prompt templates from the registry, resolved by alias and kept in step with promotions.

An application names a template by `name@alias`. The first request resolves the alias (GetModelVersion), downloads
and parses that version once (versions are immutable: cached by (name, version)), and remembers which version the
alias points at. `models.promoted` for that name (any alias move: champion, previous, a user alias) drops what was
remembered and resolves it again in the background, so the next request uses the new version without waiting.
`max_age_s` bounds how long a resolution is trusted without an event (a safety net; promotions arrive as events).

`version(name, version)` is a pinned template version (gRPC Generate's `prompt_version`: a candidate the evaluator
runs): the same parsed-once cache, no alias involved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.common.prompt_templates import PromptTemplate, parse_prompt_template
from flywheel.proto.events.v1 import common_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedPrompt:
    name: str
    version: int
    template: PromptTemplate


class PromptResolver:
    def __init__(self, registry: ModelRegistry, *, max_age_s: float = 300.0) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self._aliases: dict[tuple[str, str], tuple[int, float]] = {}  # (name, alias) -> (version, resolved at)
        self._templates: dict[tuple[str, int], PromptTemplate] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Moves on every promotion of the key: a resolution that started before one is not remembered.
        self._epochs: dict[tuple[str, str], int] = {}
        self._background: set[asyncio.Task] = set()

    async def resolve(self, name: str, alias: str) -> ResolvedPrompt:
        """The version `name@alias` points at now, parsed. Unavailable when it does not resolve (the application
        cannot answer), FailedPrecondition when it is not a valid prompt template."""
        key = (name, alias)
        hit = self._aliases.get(key)
        if hit is not None and time.monotonic() - hit[1] < self.max_age_s:
            return ResolvedPrompt(name, hit[0], self._templates[(name, hit[0])])
        async with self._locks.setdefault(key, asyncio.Lock()):
            hit = self._aliases.get(key)
            if hit is not None and time.monotonic() - hit[1] < self.max_age_s:
                return ResolvedPrompt(name, hit[0], self._templates[(name, hit[0])])
            return await self._resolve(name, alias)

    async def version(self, name: str, version: int) -> ResolvedPrompt:
        """Version `version` of the template `name`, parsed (cached: versions are immutable). NotFound when the
        registry has no such version, InvalidArgument when it is not a prompt template."""
        template = self._templates.get((name, version))
        if template is not None:
            return ResolvedPrompt(name, version, template)
        async with self._locks.setdefault((name, f"v{version}"), asyncio.Lock()):
            template = self._templates.get((name, version))
            if template is None:
                found = await self.registry.get_version(name, version)
                if found is None:
                    raise NotFound(f"prompt template {name!r} has no version {version} in the registry")
                if found.kind != common_pb2.MODEL_KIND_PROMPT:
                    raise InvalidArgument(f"{name} v{version} is {common_pb2.ModelKind.Name(found.kind)}, not a "  # type: ignore[arg-type]
                                          "prompt template")
                data = await self.registry.download(name, version)
                template = parse_prompt_template(data, source=f"prompt template {name} v{version}")
                self._templates[(name, version)] = template
        return ResolvedPrompt(name, version, template)

    async def _resolve(self, name: str, alias: str) -> ResolvedPrompt:
        epoch = self._epochs.get((name, alias), 0)
        found = await self.registry.get_version(name, alias=alias)
        if found is None:
            self._aliases.pop((name, alias), None)
            raise Unavailable(f"prompt template {name}@{alias} does not resolve in the registry")
        if found.kind != common_pb2.MODEL_KIND_PROMPT:
            raise FailedPrecondition(f"{name} v{found.version} is not a prompt template")
        template = self._templates.get((name, found.version))
        if template is None:
            data = await self.registry.download(name, found.version)
            template = parse_prompt_template(data, source=f"prompt template {name} v{found.version}")
            self._templates[(name, found.version)] = template
        if self._epochs.get((name, alias), 0) != epoch:
            return ResolvedPrompt(name, found.version, template)  # moved meanwhile: answer, but do not remember
        previous = self._aliases.get((name, alias))
        self._aliases[(name, alias)] = (found.version, time.monotonic())
        if previous is None or previous[0] != found.version:
            log.info("prompt template resolved", extra={"prompt": f"{name}@{alias}", "version": found.version,
                                                        "previous": previous[0] if previous else 0})
        return ResolvedPrompt(name, found.version, template)

    def on_promoted(self, name: str, alias: str) -> None:
        """An alias of `name` moved: forget it, and resolve it again now if it was in use."""
        key = (name, alias)
        self._epochs[key] = self._epochs.get(key, 0) + 1
        if self._aliases.pop(key, None) is None:
            return

        async def again() -> None:
            try:
                await self.resolve(name, alias)
            except Exception as exc:  # the next request tries again (and answers the error)
                log.warning("prompt template not resolved after a promotion",
                            extra={"prompt": f"{name}@{alias}", "error": repr(exc)})
        task = asyncio.create_task(again(), name=f"prompt-{name}@{alias}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
