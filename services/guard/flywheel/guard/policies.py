"""The policy book: every application's current policy, cached in memory and reloaded when any replica
stores a new version (NOTIFY), so a PutPolicy is seen by the next check; plus putting, reading and
seeding policies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.guard.checks import PolicySource, StoredPolicy
from flywheel.guard.policy import APPLICATION_NAME, parse
from flywheel.guard.store import GuardStore

log = logging.getLogger(__name__)
# How long "this application has no policy" is remembered (a PutPolicy clears it at once).
MISSING_TTL_S = 2.0
# How often the cache is checked against the database anyway (a missed notification heals by then).
REFRESH_S = 30.0
MAX_POLICY_BYTES = 64 * 1024


def _stored(row: Mapping[str, Any]) -> StoredPolicy:
    return StoredPolicy(application=row["application"], version=int(row["version"]), yaml=row["yaml"],
                        document=parse(row["yaml"], row["application"]), created_by=row["created_by"],
                        created_at=row["created_at"])


class PolicyBook(PolicySource):
    def __init__(self, store: GuardStore) -> None:
        self.store = store
        self._cache: dict[str, StoredPolicy] = {}
        self._missing: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._follow_changes(), name="guard-policy-changes")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def current(self, application: str) -> StoredPolicy:
        found = self._cache.get(application)
        if found is not None:
            return found
        missing_since = self._missing.get(application)
        if missing_since is not None and time.monotonic() - missing_since < MISSING_TTL_S:
            raise NotFound(f"no guard policy for application {application!r}: put one with PutPolicy "
                           f"(flywheel guard policy put {application} FILE)")
        async with self._locks.setdefault(application, asyncio.Lock()):
            found = self._cache.get(application)
            if found is not None:
                return found
            try:
                found = _stored(await self.store.policy(application))
            except NotFound:
                self._missing[application] = time.monotonic()
                raise NotFound(f"no guard policy for application {application!r}: put one with PutPolicy "
                               f"(flywheel guard policy put {application} FILE)") from None
            self._cache[application] = found
            self._missing.pop(application, None)
            return found

    async def put(self, application: str, yaml_text: str, principal: str) -> StoredPolicy:
        """Validate and store a new version; this replica uses it from the next check on, the others
        as soon as their listener hears of it."""
        if len(yaml_text.encode()) > MAX_POLICY_BYTES:
            raise InvalidArgument(f"the policy is {len(yaml_text.encode())} bytes; at most {MAX_POLICY_BYTES}")
        document = parse(yaml_text, application.strip())
        row = await self.store.add_policy(document.application, yaml_text, principal)
        assert row is not None
        stored = _stored(row)
        self._install(stored)
        log.info("guard policy stored", extra={"application": stored.application, "version": stored.version,
                                               "by": principal})
        return stored

    async def get(self, application: str, version: int = 0) -> StoredPolicy:
        if not application.strip():
            raise InvalidArgument("application is required")
        if version < 0:
            raise InvalidArgument(f"version must be 0 (the newest) or a version number, not {version}")
        return _stored(await self.store.policy(application.strip(), version))

    async def newest(self) -> list[StoredPolicy]:
        return [_stored(r) for r in await self.store.newest_policies()]

    async def seed(self, directory: Path) -> list[str]:
        """Store each `<application>.yaml` of `directory` as version 1 of an application that has no policy
        yet (several replicas starting together store it once); returns the applications seeded."""
        seeded = []
        files = await asyncio.to_thread(lambda: [(p, p.read_text()) for p in sorted(Path(directory).glob("*.yaml"))])
        for path, text in files:
            application = path.stem
            if not re.match(APPLICATION_NAME, application):
                log.warning("policy file name is not an application name; skipped", extra={"file": str(path)})
                continue
            parse(text, application)  # a broken seed fails the start, loudly
            if await self.store.add_policy(application, text, "seed", only_if_none=True) is not None:
                seeded.append(application)
        if seeded:
            log.info("guard policies seeded", extra={"applications": seeded, "from": str(directory)})
        return seeded

    def _install(self, stored: StoredPolicy) -> None:
        current = self._cache.get(stored.application)
        if current is None or current.version < stored.version:
            self._cache[stored.application] = stored
        self._missing.pop(stored.application, None)

    async def reload(self, application: str) -> None:
        """Read the application's newest policy again (after a notification)."""
        try:
            self._install(_stored(await self.store.policy(application)))
        except NotFound:
            self._cache.pop(application, None)

    async def _follow_changes(self) -> None:
        refresher = asyncio.create_task(self._refresh_periodically(), name="guard-policy-refresh")
        try:
            while True:
                try:
                    async for application in self.store.policy_changes():
                        await self._apply_change(application)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store reconnects by itself; this only guards the loop
                    log.warning("policy change listener failed", extra={"error": repr(exc)})
                    await asyncio.sleep(1.0)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self._apply_change("")

    async def _apply_change(self, application: str) -> None:
        try:
            if application:
                await self.reload(application)
            else:  # (re)connected, or a periodic look: refresh what is cached
                for name in list(self._cache):
                    await self.reload(name)
                self._missing.clear()
        except Exception as exc:
            log.warning("policy reload failed", extra={"application": application, "error": repr(exc)})
