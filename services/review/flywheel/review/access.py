"""Who may do what in the review app.

Three roles, the platform's: a `reviewer` works queues (claims items, labels, skips, undoes their own
decisions, sees progress); a `lead` also leads them (creates reviewers, resolves conflicts, reads
agreement, exports decisions); an `admin` does everything, including managing leads and admins. A user
may be limited to some queues (`queues`, empty = all): a reviewer works only those, a lead leads only
those. Callers of the JSON API with a platform bearer token act with their token's role on every queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flywheel.common.auth import Principal, Role
from flywheel.common.errors import FlywheelError

REVIEWER, LEAD, ADMIN = "reviewer", "lead", "admin"
ROLES = (REVIEWER, LEAD, ADMIN)


class Forbidden(FlywheelError):
    """The caller is known but may not do this (HTTP 403)."""


class Unauthenticated(FlywheelError):
    """The caller is not logged in / sent no valid token (HTTP 401)."""


@dataclass(frozen=True)
class Actor:
    """The person (session) or client (bearer token) behind a request."""

    name: str
    role: str
    # Queues this actor works or leads; empty = every queue.
    queues: frozenset[str] = field(default_factory=frozenset)
    # The user's id for a session; "" for a bearer token.
    user_id: str = ""

    @property
    def is_lead(self) -> bool:
        return self.role in (LEAD, ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def _covers(self, queue: str) -> bool:
        return self.is_admin or not self.queues or queue in self.queues

    def may_work(self, queue: str) -> bool:
        return self.role in ROLES and self._covers(queue)

    def may_lead(self, queue: str) -> bool:
        return self.is_lead and self._covers(queue)

    def require_work(self, queue: str) -> None:
        if not self.may_work(queue):
            raise Forbidden(f"{self.name} ({self.role}) does not work queue {queue!r}")

    def require_lead(self, queue: str | None = None) -> None:
        """A lead of `queue` (or, with None, a lead of any queue)."""
        if queue is None:
            if not self.is_lead:
                raise Forbidden(f"{self.name} ({self.role}) is not a lead: this needs role lead or admin")
        elif not self.may_lead(queue):
            raise Forbidden(f"{self.name} ({self.role}) does not lead queue {queue!r}")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden(f"{self.name} ({self.role}) is not an admin")

    def may_create(self, role: str, queues: frozenset[str]) -> bool:
        """An admin creates any user; a lead creates reviewers of queues it leads."""
        if self.is_admin:
            return True
        return self.role == LEAD and role == REVIEWER and (
            not self.queues or (bool(queues) and queues <= self.queues))


def actor_of_principal(principal: Principal) -> Actor:
    """The actor of a platform bearer token: its highest review role; Forbidden without one."""
    for role in (Role.ADMIN, Role.LEAD, Role.REVIEWER):
        if role in principal.roles:
            return Actor(principal.name, role.value)
    raise Forbidden(f"{principal.describe()} may not use the review app: it needs role reviewer, lead or admin")
