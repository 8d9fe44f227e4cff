"""Authentication and roles on every door: bearer tokens that map to a principal and its roles.

A token is a random string shown once when it is created (`flywheel auth create-token`); the
database keeps only its sha256, in the platform's `auth` schema. Every gRPC server checks the
`authorization: Bearer <token>` metadata of each call against the roles the RPC declares
(`RpcServer.add(..., roles=...)`), every HTTP door does the same with the header. A missing or
unknown token is UNAUTHENTICATED / 401, a known token without a needed role PERMISSION_DENIED /
403. Health checks and reflection stay open. The principal of the call is available to the use
cases through `current_principal()`: audit trails record it, never a name sent in the request.

Roles: `admin` may do anything; `operator` promotes, rolls back, edits policies and starts runs;
`service` is what services need from each other; `reviewer` does review work, `lead` also leads
reviewers (creates them, resolves their conflicts, reads agreement and exports); `reader` gets and
lists; `predict` calls the inference data plane.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation

from flywheel.common.db import Database, migrate
from flywheel.common.errors import AlreadyExists, InvalidArgument, NotFound

AUTH_SCHEMA = "auth"
MIGRATIONS = Path(__file__).parent / "auth_migrations"
TOKEN_PREFIX = "fwt_"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    SERVICE = "service"
    REVIEWER = "reviewer"
    # Leads reviewers in the review app: creates reviewers, resolves conflicting labels, exports.
    LEAD = "lead"
    READER = "reader"
    PREDICT = "predict"


Roles = frozenset[Role]

# What an RPC or route may require; `admin` passes every check. OPEN: no token needed (probes).
OPEN: Roles = frozenset()
READ: Roles = frozenset({Role.READER, Role.OPERATOR, Role.SERVICE})
OPERATE: Roles = frozenset({Role.OPERATOR})
SERVICE: Roles = frozenset({Role.SERVICE})
WRITE: Roles = frozenset({Role.SERVICE, Role.OPERATOR})
PREDICT: Roles = frozenset({Role.PREDICT})
REVIEW: Roles = frozenset({Role.REVIEWER, Role.LEAD})
LEAD: Roles = frozenset({Role.LEAD})


def roles(*names: str | Role) -> Roles:
    """Parse role names; InvalidArgument naming the valid ones for anything else."""
    parsed = set()
    for name in names:
        try:
            parsed.add(Role(str(name).strip().lower()))
        except ValueError:
            raise InvalidArgument(f"unknown role {name!r}; roles: {', '.join(r.value for r in Role)}") from None
    return frozenset(parsed)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the name audit trails record, and the roles the token grants."""

    name: str
    roles: Roles
    token_id: str = ""

    def may(self, allowed: Iterable[Role]) -> bool:
        return Role.ADMIN in self.roles or not self.roles.isdisjoint(allowed)

    def describe(self) -> str:
        return f"{self.name} (roles: {', '.join(sorted(self.roles)) or 'none'})"


ANONYMOUS = Principal("anonymous", frozenset({Role.PREDICT}))


class AuthError(Exception):
    """A request that may not proceed; `status` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("flywheel_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the request being handled (None outside a request)."""
    return _principal.get()


def principal_name(default: str = "") -> str:
    """The current caller's name, for audit trails; `default` outside a request (e.g. an event handler)."""
    principal = _principal.get()
    return principal.name if principal is not None else default


def bind_principal(principal: Principal) -> contextvars.Token:
    return _principal.set(principal)


def unbind_principal(token: contextvars.Token) -> None:
    _principal.reset(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer(value: str | None) -> str | None:
    """The token of an `authorization` header value, or None when it is not `Bearer <token>`."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    id: str
    principal: str
    roles: Roles
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    description: str


class TokenStore:
    """Tokens in the `auth` schema of the platform database (only sha256 hashes are stored)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> None:
        """Create or upgrade the `auth` schema (safe to call from every process at start)."""
        await migrate(Database(self.db.url, AUTH_SCHEMA), MIGRATIONS, track="auth")

    async def create(self, principal: str, role_names: Iterable[str | Role], *, created_by: str = "",
                     expires_at: datetime | None = None, description: str = "", token: str | None = None,
                     ) -> tuple[str, TokenInfo]:
        """A new token for `principal` with `role_names`; returns (the token, shown only now, its info).

        `token` registers a given secret instead of a random one (e.g. a Kubernetes Secret's value);
        it must be long enough to be unguessable.
        """
        if not principal.strip():
            raise InvalidArgument("principal is empty")
        granted = roles(*role_names)
        if not granted:
            raise InvalidArgument("a token needs at least one role")
        if token is not None and len(token) < 24:
            raise InvalidArgument("a given token must be at least 24 characters long")
        secret = token or new_token()
        token_id = token_hash(secret)[:12]
        try:
            async with self.db.connection() as conn:
                row = await (await conn.execute(
                    "INSERT INTO auth.tokens (id, sha256, principal, roles, created_by, expires_at, description)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (token_id, token_hash(secret), principal.strip(), sorted(r.value for r in granted), created_by,
                     expires_at, description))).fetchone()
        except UniqueViolation:
            raise AlreadyExists("this token is registered already") from None
        assert row is not None
        return secret, _info(row)

    async def lookup(self, token: str) -> Principal | None:
        """The principal of a valid (known, unexpired, unrevoked) token; None otherwise."""
        async with self.db.connection() as conn:
            return await self.lookup_in(conn, token)

    @staticmethod
    async def lookup_in(conn: AsyncConnection, token: str) -> Principal | None:
        row = await (await conn.execute(
            "SELECT id, principal, roles FROM auth.tokens WHERE sha256 = %s AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())", (token_hash(token),))).fetchone()
        if row is None:
            return None
        return Principal(row["principal"], roles(*row["roles"]), row["id"])

    async def list(self, include_revoked: bool = False) -> list[TokenInfo]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT * FROM auth.tokens" + ("" if include_revoked else " WHERE revoked_at IS NULL")
                + " ORDER BY created_at, id")).fetchall()
        return [_info(r) for r in rows]

    async def revoke(self, token_id: str) -> TokenInfo:
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "UPDATE auth.tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING *",
                (token_id,))).fetchone()
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        return _info(row)


def _info(row: Mapping) -> TokenInfo:
    return TokenInfo(id=row["id"], principal=row["principal"], roles=roles(*row["roles"]),
                     created_at=row["created_at"], created_by=row["created_by"], expires_at=row["expires_at"],
                     revoked_at=row["revoked_at"], description=row["description"])


class Authenticator:
    """Checks bearer tokens against the token store, with a short cache so a busy door does not
    ask the database per request. A revoked token stops working within `cache_seconds`."""

    def __init__(self, store: TokenStore, *, anonymous: Principal | None = None, cache_seconds: float = 10.0,
                 negative_cache_seconds: float = 2.0, max_cached: int = 10_000) -> None:
        """`anonymous`: the principal of calls without a token (None: they are refused)."""
        self.store = store
        self.anonymous = anonymous
        self.cache_seconds = cache_seconds
        self.negative_cache_seconds = negative_cache_seconds
        self.max_cached = max_cached
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        self._by_header: dict[str, tuple[Principal, float]] = {}

    async def start(self) -> None:
        await self.store.migrate()

    async def principal(self, authorization: str | None) -> Principal:
        """The principal of an `authorization` header value; AuthError(401) when there is none."""
        if not authorization:
            if self.anonymous is not None:
                return self.anonymous
            raise AuthError(401, "missing credentials: send the header `authorization: Bearer <token>` "
                                 "(create a token with `flywheel auth create-token`)")
        token = bearer(authorization)
        if token is None:
            raise AuthError(401, "the authorization header must be `Bearer <token>`")
        principal = await self._lookup(token)
        if principal is None:
            raise AuthError(401, "unknown, expired or revoked token")
        entry = self._cache.get(token_hash(token))
        if entry is not None:
            # Valid tokens by header value, until their cache entry expires: a cached call needs neither
            # parsing nor hashing nor awaiting (authorize_cached).
            if len(self._by_header) >= self.max_cached:
                self._by_header.clear()
            self._by_header[authorization] = (principal, entry[1])
        return principal

    async def authorize(self, authorization: str | None, allowed: Roles, action: str) -> Principal:
        """The caller, if it may do `action` (which needs one of `allowed`); AuthError(401/403) if not."""
        principal = await self.principal(authorization)
        if not principal.may(allowed):
            needs = " or ".join(sorted(allowed | {Role.ADMIN}))
            if principal is self.anonymous:
                raise AuthError(401, f"{action} needs a token with role {needs}: send `authorization: Bearer "
                                     "<token>`")
            raise AuthError(403, f"{principal.describe()} may not {action}: it needs role {needs}")
        return principal

    def authorize_cached(self, authorization: str | None, allowed: Roles, action: str) -> Principal | None:
        """`authorize` without awaiting when the answer is known (an anonymous call, or a token looked up
        less than `cache_seconds` ago); None when the token store must be asked (then await `authorize`)."""
        if authorization:
            cached = self._by_header.get(authorization)
            if cached is None or cached[1] <= time.monotonic():
                return None
            principal = cached[0]
        elif self.anonymous is not None:
            principal = self.anonymous
        else:
            return None
        if principal.may(allowed):
            return principal
        return None  # `authorize` says why not

    async def _lookup(self, token: str) -> Principal | None:
        key = token_hash(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        pending = self._pending.get(key)
        if pending is not None:  # one database query per token, however many calls wait for it
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            principal = await self.store.lookup(token)
            if len(self._cache) >= self.max_cached:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= self.max_cached:
                    self._cache.clear()
            ttl = self.cache_seconds if principal is not None else self.negative_cache_seconds
            self._cache[key] = (principal, now + ttl)
            future.set_result(principal)
            return principal
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._pending[key]
