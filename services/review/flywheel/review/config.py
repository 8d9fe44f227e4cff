"""Settings of the review app (env prefix FLYWHEEL_REVIEW_, plus the shared FLYWHEEL_ ones)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel.common.settings import Readiness, ServiceSettings, shared

# Where the demo logins `make run` asks for are written (mode 0600), under FLYWHEEL_HOME.
DEMO_LOGINS_FILE = "review-demo-logins.json"


class ReviewSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_REVIEW_", extra="ignore", populate_by_name=True)

    http_host: str = Field("127.0.0.1", description="Interface the web server binds (0.0.0.0 in containers).")
    http_port: int = Field(8080, description="Port of the pages and the JSON API (/api/v1).")
    metrics_port: int = Field(9110, description="Prometheus /metrics port; 0 turns it off.")
    db_schema: str = Field("review", description="PostgreSQL schema the review app owns (users, items, decisions).")
    consumer_group: str = Field("review", description="Kafka consumer group for reviews.requested.")

    # Work.
    lease_seconds: float = Field(
        300.0, gt=0, description="How long a claimed item stays with its reviewer; an abandoned item returns to "
                                 "the queue after this (the work page renews the lease while it is open).")
    undo_seconds: float = Field(
        30.0, ge=0, description="How long a reviewer may undo a decision. Its events are held in the outbox "
                                "until then, so an undone decision never leaves a published event behind.")
    double_label_share: float = Field(
        0.1, ge=0, le=1, description="Share of items (picked by a hash of the item, so replays pick the same) "
                                     "that two reviewers label independently, for agreement (Cohen's kappa).")
    label_names: dict[str, list[str]] = Field(
        default_factory=lambda: {"*": ["negative", "positive"]},
        description="JSON: queue (model name, or '*' = default) -> [name of the negative label, name of the "
                    "positive one] for predictive items, e.g. {\"fraud\": [\"legit\", \"fraud\"]}. The label "
                    "sent on feedback.received is the flag (false, true), as a chargeback's is.")
    max_text_chars: int = Field(20_000, gt=0, description="Longest corrected answer or comment accepted.")

    # Users and sessions.
    session_secret: str = Field(
        "", description="Key that signs session cookies; empty = one generated at first start and kept in the "
                        "schema (shared by replicas). Changing it logs everyone out.")
    session_hours: float = Field(12.0, gt=0, description="A session ends this long after login.")
    cookie_secure: bool = Field(
        False, description="Send cookies over HTTPS only (set it when the app is served over TLS or behind an "
                           "HTTPS proxy).")
    login_attempts: int = Field(5, gt=0, description="Failed logins of one user name before it is locked...")
    login_lockout_seconds: float = Field(300.0, gt=0, description="...for this long.")
    demo_logins: bool = Field(
        False, description="Create a demo reviewer and a demo lead at start-up (random passwords kept in "
                           f"FLYWHEEL_HOME/{DEMO_LOGINS_FILE}); `make run` turns it on, production leaves it off.")

    # Enrichment.
    registry_addr: str = shared(  # type: ignore[assignment]
        "registry_addr", "127.0.0.1:50051",
        "Registry gRPC address (FLYWHEEL_REGISTRY_ADDR): names the features of a predictive item's inputs.")
    rpc_timeout: float = Field(3.0, gt=0, description="Deadline of a call to the registry, in seconds.")

    @field_validator("label_names")
    @classmethod
    def _two_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for queue, names in value.items():
            if len(names) != 2 or len({n.strip().lower() for n in names}) != 2 or not all(n.strip() for n in names):
                raise ValueError(f"label_names[{queue!r}] must be two different names [negative, positive], "
                                 f"got {names!r}")
        return value

    def labels_for(self, queue: str) -> list[str]:
        """[negative name, positive name] of a queue's predictive items."""
        return self.label_names.get(queue) or self.label_names.get("*") or ["negative", "positive"]

    def readiness(self) -> Readiness:
        """No gRPC here: `make run` waits for GET /readyz to answer 200."""
        return Readiness("http", f"{self.http_host}:{self.http_port}", "/readyz")

    def console_notes(self) -> list[str]:
        """The demo logins, once the app has created them (`make run` prints these)."""
        try:
            logins = json.loads((Path(self.home) / DEMO_LOGINS_FILE).read_text())
        except (OSError, ValueError):
            return []
        url = f"http://{self.http_host}:{self.http_port}/"
        return [f"log in at {url}  as {login['username']} / {login['password']} ({login['role']})"
                for login in logins]
