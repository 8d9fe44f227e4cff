"""Every replica's copy of the applications, and the operator's create / replace / delete.

Where they live: inference's own schema (`applications`), since inference is the only service that serves them.
How replicas see a change: each one polls a one-row revision counter (`applications_revision`, moved in the same
transaction as every write) every `refresh_s` (1 s by default) and re-reads the table when it moved; the replica
that made the change re-reads at once. So a change is served everywhere within about a second, a replica that
lost the database keeps serving the last copy it read, and a delete is seen like any other change. (LISTEN/NOTIFY
would be faster, but needs a dedicated connection per replica and a full re-read after every reconnect anyway;
one indexed read of one row per second is cheap.) Requests read the in-memory copy only: no database on the
answer path.

A definition is checked against what it names before it is stored: the prompt alias must resolve to a version
of kind prompt, the model must be an LLM or adapter in the registry, the collection must exist for the tenant,
and the name must not be an LLM's or adapter's (the two would compete for `model` in /v1/chat/completions; a prompt
template often has its application's name, and may).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flywheel.common.auth import principal_name
from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import AlreadyExists, InvalidArgument, NotFound
from flywheel.common.tasks import cancel_and_wait
from flywheel.inference.apps.domain import Application
from flywheel.inference.apps.store import ApplicationStore
from flywheel.proto.events.v1 import common_pb2

log = logging.getLogger(__name__)

MODEL_KINDS = (common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER)


class ApplicationCatalog:
    def __init__(self, store: ApplicationStore, registry: ModelRegistry, retriever: Any | None = None, *,
                 refresh_s: float = 1.0) -> None:
        self.store = store
        self.registry = registry
        self.retriever = retriever
        self.refresh_s = refresh_s
        self.revision = -1
        self.apps: dict[str, Application] = {}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    # -- reads (the answer path) ----------------------------------------------------------------------

    def get(self, name: str) -> Application | None:
        return self.apps.get(name)

    def all(self) -> list[Application]:
        return [self.apps[n] for n in sorted(self.apps)]

    def require(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"application {name!r} does not exist")
        return app

    # -- keeping the copy fresh -----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the poller retries; inference serves models meanwhile
            log.warning("applications not read yet", extra={"error": repr(exc)})
        self._task = asyncio.create_task(self._poll(), name="applications-refresh")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and self.revision >= 0 and await self.store.revision() == self.revision:
                return
            revision, apps = await self.store.load()
            if revision != self.revision:
                log.info("applications loaded", extra={"revision": revision, "applications": sorted(apps)})
            self.revision, self.apps = revision, apps

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("applications not refreshed; serving the last copy", extra={"error": repr(exc)})
                failing = True

    # -- the operator's changes -----------------------------------------------------------------------

    async def put(self, app: Application) -> tuple[Application, bool]:
        await self.check_references(app)
        stored, created = await self.store.put(app, principal_name("unknown"))
        await self.refresh(force=True)
        log.info("application " + ("created" if created else "replaced"),
                 extra={"application": app.name, "by": stored.updated_by, "revision": stored.revision})
        return stored, created

    async def delete(self, name: str) -> None:
        if not await self.store.delete(name):
            raise NotFound(f"application {name!r} does not exist")
        await self.refresh(force=True)
        log.info("application deleted", extra={"application": name, "by": principal_name("unknown")})

    async def check_references(self, app: Application) -> None:
        """InvalidArgument naming what does not resolve; AlreadyExists when a model has the application's name."""
        same = await self.registry.get_version(app.name, version=1)  # versions start at 1
        if same is not None and same.kind in MODEL_KINDS:  # a prompt template may share the name
            raise AlreadyExists(f"{app.name!r} is an LLM or adapter in the registry; an application cannot take its "
                                "name (both would answer to it in /v1/chat/completions)")
        prompt = await self.registry.get_version(app.prompt.name, alias=app.prompt.alias)
        if prompt is None:
            raise InvalidArgument(f"prompt {app.prompt} does not resolve in the registry: register the template "
                                  f"(flywheel prompt register) and set its {app.prompt.alias!r} alias")
        if prompt.kind != common_pb2.MODEL_KIND_PROMPT:
            raise InvalidArgument(f"prompt {app.prompt} is {common_pb2.ModelKind.Name(prompt.kind)}, not a prompt "  # type: ignore[arg-type]
                                  "template")
        model = await self.registry.get_version(app.model, version=1)  # versions start at 1
        if model is None:
            raise InvalidArgument(f"model {app.model!r} is not in the registry")
        if model.kind not in MODEL_KINDS:
            raise InvalidArgument(f"model {app.model!r} is {common_pb2.ModelKind.Name(model.kind)}; an application "  # type: ignore[arg-type]
                                  "needs an LLM or a LoRA adapter")
        if self.retriever is not None and hasattr(self.retriever, "list_collections"):
            tenant = app.retrieval.tenant
            names = {c.name for c in await self.retriever.list_collections(tenant)}
            if app.retrieval.collection not in names:
                raise InvalidArgument(f"retrieval.collection {app.retrieval.collection!r} does not exist for tenant "
                                      f"{tenant or '(default)'!r}; collections: {', '.join(sorted(names)) or 'none'}")
