"""Reference data of a model version, downloaded once from the registry and cached."""

from __future__ import annotations

import asyncio

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.monitor.analysis import Reference, read_reference


class ReferenceCache:
    """Artifacts are immutable per version, so a version's reference never needs refreshing."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, int], Reference] = {}
        self._lock = asyncio.Lock()

    async def get(self, model_name: str, version: int) -> Reference:
        """NotFound when the registry has no such version (its windows cannot be analyzed), Unavailable when
        it cannot be asked now."""
        key = (model_name, version)
        if key in self._cache:
            return self._cache[key]
        async with self._lock:
            if key not in self._cache:
                try:
                    data = await self.registry.download(model_name, version)
                except InvalidArgument as exc:  # e.g. a malformed name: no version will ever be found
                    raise NotFound(f"{model_name} v{version}: {exc}") from exc
                self._cache[key] = await asyncio.to_thread(read_reference, data)
        return self._cache[key]
