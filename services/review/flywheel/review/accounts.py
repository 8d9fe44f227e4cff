"""People who log in: users with argon2id password hashes, sessions kept in the database (so logout and
disabling a user end them for good), a lockout after repeated failed logins, and the demo logins
`make run` asks for.

A lead creates reviewers (of the queues it leads); an admin creates anyone. The session token travels in
a signed cookie (the web layer signs it); the database keeps only its sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter

from flywheel.common.db import Database
from flywheel.common.errors import AlreadyExists, InvalidArgument, NotFound
from flywheel.review import store
from flywheel.review.access import ADMIN, LEAD, REVIEWER, ROLES, Actor, Forbidden, Unauthenticated
from flywheel.review.store import User

log = logging.getLogger(__name__)

LOGINS = Counter("flywheel_review_logins_total", "Login attempts, by outcome.", ["outcome"])
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 8
# The demo logins `make run` creates (name, role).
DEMO_USERS = (("reviewer", REVIEWER), ("lead", LEAD))


class TooManyAttempts(Forbidden):
    """Too many failed logins for this user name: locked for a while (HTTP 429)."""


@dataclass(frozen=True)
class Session:
    """A logged-in user: who acts, and the token every form of the session must carry."""

    actor: Actor
    csrf_token: str


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME.match(name):
        raise InvalidArgument("user name must be 2-64 characters of a-z, 0-9, '.', '_' or '-', starting with a "
                              f"letter or digit (got {username!r})")
    return name


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise InvalidArgument("password must be at most 1024 characters")


class Accounts:
    def __init__(self, db: Database, *, session_hours: float = 12.0, attempts: int = 5,
                 lockout_seconds: float = 300.0, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self.session_hours = session_hours
        self.attempts = attempts
        self.lockout_seconds = lockout_seconds
        self.hasher = hasher or PasswordHasher()
        # Hashed once, verified against when a name is unknown, so a login takes as long either way.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False
        return await asyncio.to_thread(verify)

    # -- users --------------------------------------------------------------------------------------

    async def create_user(self, actor: Actor, username: str, password: str, role: str,
                          queues: Iterable[str] = ()) -> User:
        name = check_username(username)
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        scope = frozenset(q.strip() for q in queues if q.strip())
        check_password(password)
        if not actor.may_create(role, scope):
            if actor.role == LEAD and role != REVIEWER:
                raise Forbidden(f"{actor.name} (lead) may create reviewers only, not a user with role {role}")
            if actor.role == LEAD:
                asked = ", ".join(sorted(scope)) or "all queues"
                raise Forbidden(f"{actor.name} (lead) may create reviewers of the queues it leads "
                                f"({', '.join(sorted(actor.queues))}), not of {asked}")
            raise Forbidden(f"{actor.name} ({actor.role}) may not create users")
        user = User(id=str(uuid.uuid4()), username=name, role=role, queues=sorted(scope), created_at=None,
                    created_by=actor.name, disabled_at=None, password_hash=await self._hash(password))
        async with self.db.connection() as conn:
            created = await store.add_user(conn, user)
        if created is None:
            raise AlreadyExists(f"user {name!r} exists already")
        log.info("user created", extra={"username": name, "role": role, "by": actor.name})
        return created

    async def list_users(self, actor: Actor) -> list[User]:
        actor.require_lead()
        async with self.db.connection() as conn:
            users = await store.list_users(conn)
        if actor.is_admin:
            return users
        return [u for u in users if u.role == REVIEWER and (not actor.queues or set(u.queues) <= actor.queues)]

    async def set_disabled(self, actor: Actor, username: str, disabled: bool) -> User:
        """Disable (ending its sessions) or enable a user; an admin may do it to anyone, a lead to its reviewers."""
        name = check_username(username)
        async with self.db.connection() as conn:
            target = await store.user_by_name(conn, name)
            if target is None:
                raise NotFound(f"no user {name!r}")
            if not (actor.is_admin or (actor.role == LEAD and target.role == REVIEWER and (
                    not actor.queues or (target.queues and set(target.queues) <= actor.queues)))):
                raise Forbidden(f"{actor.name} ({actor.role}) may not change user {name!r} ({target.role})")
            if target.username == actor.name and disabled:
                raise InvalidArgument("you cannot disable yourself")
            changed = await store.set_disabled(conn, name, disabled)
        assert changed is not None
        return changed

    async def change_password(self, actor: Actor, old: str, new: str) -> None:
        check_password(new)
        async with self.db.connection() as conn:
            user = await store.user_by_name(conn, actor.name)
        if user is None or not actor.user_id or not await self._verify(user.password_hash, old):
            raise InvalidArgument("the current password is wrong")
        async with self.db.connection() as conn:
            await store.set_password(conn, user.id, await self._hash(new))

    # -- sessions -----------------------------------------------------------------------------------

    def _locked(self, name: str) -> bool:
        now = time.monotonic()
        failures = self._failures[name]
        while failures and failures[0] < now - self.lockout_seconds:
            failures.popleft()
        if not failures:
            self._failures.pop(name, None)
        return len(failures) >= self.attempts

    async def login(self, username: str, password: str) -> tuple[str, Session]:
        """A new session for a valid login: (the session token for the cookie, the session)."""
        name = username.strip().lower()
        if self._locked(name):
            LOGINS.labels("locked").inc()
            raise TooManyAttempts(f"too many failed logins for {name!r}: try again in a few minutes")
        async with self.db.connection() as conn:
            user = await store.user_by_name(conn, name) if USERNAME.match(name) else None
        valid = await self._verify(user.password_hash if user else self._dummy_hash, password)
        if user is None or not valid or user.disabled_at is not None:
            self._failures[name].append(time.monotonic())
            LOGINS.labels("failed").inc()
            raise Unauthenticated("wrong user name or password")
        self._failures.pop(name, None)
        if self.hasher.check_needs_rehash(user.password_hash):
            async with self.db.connection() as conn:
                await store.set_password(conn, user.id, await self._hash(password))
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self.db.connection() as conn:
            await store.add_session(conn, session_id(token), user.id, csrf, self.session_hours)
        LOGINS.labels("ok").inc()
        return token, Session(Actor(user.username, user.role, frozenset(user.queues), user.id), csrf)

    async def session(self, token: str) -> Session | None:
        async with self.db.connection() as conn:
            row = await store.session_user(conn, session_id(token))
        if row is None:
            return None
        return Session(Actor(row["username"], row["role"], frozenset(row["queues"]), row["id"]), row["csrf_token"])

    async def logout(self, token: str) -> None:
        async with self.db.connection() as conn:
            await store.drop_session(conn, session_id(token))

    async def expire_sessions(self) -> int:
        async with self.db.connection() as conn:
            return await store.drop_expired_sessions(conn)

    async def session_secret(self) -> str:
        """The key that signs session cookies, generated once and shared by every replica."""
        async with self.db.connection() as conn:
            return await store.secret(conn, "session-signing-key", secrets.token_urlsafe(48))

    # -- demo ---------------------------------------------------------------------------------------

    async def ensure_demo_logins(self, path: Path) -> list[dict[str, str]]:
        """The demo reviewer and lead (`make run`): created with random passwords written to `path` (0600),
        reused from there on later starts; a user that exists keeps its password."""
        try:
            known = {login["username"]: login for login in json.loads(path.read_text())}  # noqa: ASYNC240 - tiny
        except (OSError, ValueError, KeyError, TypeError):
            known = {}
        system = Actor("make run", ADMIN)
        logins = []
        for username, role in DEMO_USERS:
            password = known.get(username, {}).get("password") or secrets.token_urlsafe(9)
            try:
                await self.create_user(system, username, password, role)
            except AlreadyExists:
                if username not in known:
                    continue  # someone made this user; its password is theirs, not ours to print
            logins.append({"username": username, "password": password, "role": role})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(logins, indent=2) + "\n")
        os.chmod(path, 0o600)
        return logins
