"""Feature names for a predictive item's inputs, so a reviewer reads `transactions__amount = 412.5` rather
than `numeric[0] = 412.5`. Inference logs the feature matrix without names; the registry knows them (a
version's lineage lists its features in the order the model consumes them: numeric, then categorical).

Best effort: names are fetched when an item is shown, cached per version, and an unreachable registry
only means unnamed values.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FlywheelError
from flywheel.common.tasks import within

log = logging.getLogger(__name__)
MISS_SECONDS = 60.0  # how long a failed lookup is not tried again


class FeatureNames:
    def __init__(self, registry: ModelRegistry | None, timeout: float = 3.0) -> None:
        self.registry = registry
        self.timeout = timeout
        self._cache: dict[tuple[str, int], tuple[list[str], float]] = {}

    async def of(self, model: str, version: int) -> list[str]:
        """The version's feature names in model order; [] when unknown."""
        if self.registry is None or not model or version <= 0:
            return []
        key = (model, version)
        cached = self._cache.get(key)
        if cached is not None and (cached[0] or cached[1] > time.monotonic()):
            return cached[0]
        names: list[str] = []
        try:
            found = await within(self.registry.get_version(model, version), self.timeout)
            if found is not None:
                names = list(found.lineage.feature_names)
        except (FlywheelError, TimeoutError, OSError) as exc:
            log.info("feature names unavailable", extra={"model": model, "version": version, "error": repr(exc)})
        self._cache[key] = (names, time.monotonic() + MISS_SECONDS)
        return names

    async def annotate(self, content: dict[str, Any], model: str, version: int) -> list[dict[str, Any]]:
        """The item's input values as rows of {name, value}: feature names on the `numeric` and `categorical`
        tensors when the registry knows them, `tensor[i]` otherwise."""
        names = await self.of(model, version)
        tensors = {t["name"]: t for t in content.get("inputs", [])}
        numeric = tensors.get("numeric", {}).get("values", [])
        categorical = tensors.get("categorical", {}).get("values", [])
        named = len(names) == len(numeric) + len(categorical) and (numeric or categorical)
        rows: list[dict[str, Any]] = []
        for t in content.get("inputs", []):
            values = t.get("values", [])
            if named and t["name"] in ("numeric", "categorical"):
                offset = 0 if t["name"] == "numeric" else len(numeric)
                rows += [{"name": names[offset + i], "value": v} for i, v in enumerate(values)]
            elif len(values) == 1:
                rows.append({"name": t["name"], "value": values[0]})
            else:
                rows += [{"name": f"{t['name']}[{i}]", "value": v} for i, v in enumerate(values)]
        return rows
