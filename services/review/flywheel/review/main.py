"""Composition root of the review app: builds every part and runs the web server (pages + JSON API), the
reviews.requested consumer, the outbox relay and the metrics endpoint until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import uvicorn
from itsdangerous import TimestampSigner

from flywheel.common.auth import Authenticator, TokenStore
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner
from flywheel.common.outbox import OutboxRelay
from flywheel.common.service import run_service
from flywheel.common.supervise import HealthBoard
from flywheel.common.tasks import cancel_and_wait
from flywheel.review.accounts import Accounts
from flywheel.review.config import DEMO_LOGINS_FILE, ReviewSettings
from flywheel.review.features import FeatureNames
from flywheel.review.feedback import SOURCE
from flywheel.review.handlers import batch_handlers
from flywheel.review.queues import ReviewQueues, WorkSettings
from flywheel.review.reports import Reports
from flywheel.review.web import WebContext, build_app

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SESSION_SWEEP_SECONDS = 3600.0


class HttpServer:
    """uvicorn serving the app as a task of the current event loop (the process's signals stay the app's)."""

    def __init__(self, app: Any, host: str, port: int, *, ssl: dict[str, Any] | None = None) -> None:
        # Keep-alive longer than uvicorn's 5 s: a reviewer's page and a proxy in front reuse connections, and a
        # client that sends its next request just as the server closes an idle connection gets a reset.
        config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning", access_log=False,
                                loop="none", proxy_headers=True, timeout_keep_alive=65, **(ssl or {}))
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> int:
        self.task = asyncio.create_task(self.server._serve(), name="review-http")
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise OSError("the web server stopped while starting")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None


class ReviewApp:
    """The running review app; `start` returns once it serves, `stop` drains and closes."""

    def __init__(self, settings: ReviewSettings) -> None:
        settings.require_infrastructure()
        self.settings = settings
        self.db = Database(settings.database_url, settings.db_schema, max_size=20)
        self.health = HealthBoard()
        self.auth = Authenticator(TokenStore(self.db))
        self.queues = ReviewQueues(self.db, WorkSettings(
            lease_seconds=settings.lease_seconds, undo_seconds=settings.undo_seconds,
            double_label_share=settings.double_label_share, max_text_chars=settings.max_text_chars,
            labels_for=settings.labels_for))
        self.reports = Reports(self.db)
        self.accounts = Accounts(self.db, session_hours=settings.session_hours, attempts=settings.login_attempts,
                                 lockout_seconds=settings.login_lockout_seconds)
        self.registry = RegistryClient(settings.registry_addr, auth=settings.client_auth(),
                                       timeout=settings.rpc_timeout, keep_channel=True) \
            if settings.registry_addr else None
        self.features = FeatureNames(self.registry, settings.rpc_timeout)
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group, db=self.db,
                                       batch_handlers=batch_handlers(self.queues), source=SOURCE,
                                       health=self.health.reporter("consumer"))
        self.relay = OutboxRelay(self.db, settings.kafka_bootstrap, client_id=f"{SOURCE}-outbox",
                                 idempotent=settings.kafka_enable_idempotence,
                                 health=self.health.reporter("outbox-relay"))
        self.http: HttpServer | None = None
        self.stopping = False
        self._sweeper: asyncio.Task | None = None

    @property
    def url(self) -> str:
        port = self.http.port if self.http else self.settings.http_port
        return f"http://{self.settings.http_host}:{port}"

    def ready(self) -> bool:
        return not self.stopping and self.health.healthy

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)
        await self.auth.start()
        secret = self.settings.session_secret or await self.accounts.session_secret()
        logins = Path(self.settings.home) / DEMO_LOGINS_FILE
        if self.settings.demo_logins:
            await self.accounts.ensure_demo_logins(logins)
        else:
            logins.unlink(missing_ok=True)
        await self.relay.start()
        await self.consumer.start()
        ctx = WebContext(settings=self.settings, queues=self.queues, reports=self.reports, accounts=self.accounts,
                         authenticator=self.auth, features=self.features,
                         signer=TimestampSigner(secret, salt="flywheel-review-session"), ready=self.ready)
        tls = self.settings.server_tls()
        ssl = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file} if tls else None
        self.http = HttpServer(build_app(ctx), self.settings.http_host, self.settings.http_port, ssl=ssl)
        await self.http.start()
        self._sweeper = asyncio.create_task(self._sweep_sessions(), name="review-session-sweeper")
        log.info("review app serving", extra={"url": self.url, "metrics_port": self.settings.metrics_port})

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_SWEEP_SECONDS)
            try:
                await self.accounts.expire_sessions()
            except Exception as exc:  # the database may be down for a while; the next sweep tries again
                log.warning("session sweep failed", extra={"error": repr(exc)})

    async def stop(self) -> None:
        self.stopping = True  # readiness turns 503 first, so a load balancer stops sending
        await cancel_and_wait([self._sweeper])
        if self.http is not None:
            await self.http.stop()
        await self.consumer.stop()
        await self.relay.stop()
        if self.registry is not None:
            await self.registry.close()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.review",
        description="Flywheel review app: pages and a JSON API for human review queues fed by reviews.requested; "
                    "emits feedback.received and reviews.completed. Configured by FLYWHEEL_* / FLYWHEEL_REVIEW_* "
                    "environment variables (see services/review/README.md).")
    parser.add_argument("--port", type=int, help="HTTP port (overrides FLYWHEEL_REVIEW_HTTP_PORT)")
    args = parser.parse_args(argv)
    settings = ReviewSettings()
    if args.port is not None:
        settings.http_port = args.port
    run_service("review", settings, ReviewApp)
