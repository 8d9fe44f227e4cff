"""Guard policies: per application, versioned YAML saying which rails run, their thresholds, what each
does when it fires, the messages users see, and how callers behave (fail closed, stream windows).

    application: support-assistant
    fail_closed: true                 # guard down or too slow: the caller refuses instead of answering
    check_timeout_ms: 300
    blocked_input_response: completion   # or error (HTTP 400, code content_filter)
    stream: {window_chars: 160}
    input:
      injection: {action: block, message: "..."}            # threshold: omitted = the detector's own
      pii: {action: redact, kinds: [card_number, iban, ...]}
      topics: {action: block, categories: [investment_advice, other_customer_data], messages: {...}}
      toxicity: {action: block_escalate, threshold: 0.6}
    output:
      pii_leak: {action: redact, allow_from_context: true}
      groundedness: {action: escalate}
      topics: {action: block}
      toxicity: {action: block}

Actions: `allow` (score and record only), `redact` (PII rails only: mask the spans), `block` (stop the
text, answer with `message`), `escalate` (let it through, send it to human review), `block_escalate`
(stop it and send it to review). Rails run in the order listed above.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.common import pii
from flywheel.common.errors import InvalidArgument
from flywheel.guard.detectors import TOPICS

Action = Literal["allow", "redact", "block", "escalate", "block_escalate"]
BLOCKING = frozenset({"block", "block_escalate"})
ESCALATING = frozenset({"escalate", "block_escalate"})
INPUT_RAILS = ("injection", "pii", "topics", "toxicity")
OUTPUT_RAILS = ("pii_leak", "groundedness", "topics", "toxicity")
PII_RAILS = frozenset({"pii", "pii_leak"})
APPLICATION_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"

DEFAULT_MESSAGES = {
    "injection": "I can't help with that request. I can answer questions about Northwind accounts, cards, fees "
                 "and policies.",
    "pii": "Please don't share personal details such as card numbers here.",
    "pii_leak": "I can't share that information.",
    "topics": "I can't help with that here.",
    "toxicity": "I can't continue with that message. If you need help, please rephrase it.",
    "groundedness": "I'm not able to confirm that from the bank's policies. Please contact us for help.",
}


class Rail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # 0..1; None = the detector's calibrated threshold (groundedness: the grounding model's).
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    action: Action = "block"
    # Shown to the user when this rail blocks.
    message: str = ""
    # topics: which categories apply, and a message per category.
    categories: list[str] = Field(default_factory=list)
    messages: dict[str, str] = Field(default_factory=dict)
    # PII rails: which kinds are looked for.
    kinds: list[str] = Field(default_factory=lambda: list(pii.KINDS))
    # pii_leak: PII that appears in the retrieved chunks is not a leak (published contact details).
    allow_from_context: bool = True

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(pii.KINDS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {', '.join(unknown)}; known: {', '.join(pii.KINDS)}")
        return kinds

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: list[str]) -> list[str]:
        unknown = sorted(set(categories) - set(TOPICS))
        if unknown:
            raise ValueError(f"unknown topic categor(y/ies) {', '.join(unknown)}; known: {', '.join(TOPICS)}")
        return categories


class Stream(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Characters of a streamed answer checked per CheckOutput call.
    window_chars: int = Field(160, ge=16, le=8192)


class PolicyDocument(BaseModel):
    """A parsed, validated policy (what a check applies)."""

    model_config = ConfigDict(extra="forbid")

    application: str = Field("", pattern=r"^$|" + APPLICATION_NAME)
    description: str = ""
    fail_closed: bool = True
    check_timeout_ms: int = Field(300, ge=1, le=60_000)
    blocked_input_response: Literal["completion", "error"] = "completion"
    stream: Stream = Field(default_factory=Stream)
    input: dict[str, Rail] = Field(default_factory=dict)
    output: dict[str, Rail] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rails(self) -> PolicyDocument:
        for stage, known, rails in (("input", INPUT_RAILS, self.input), ("output", OUTPUT_RAILS, self.output)):
            unknown = sorted(set(rails) - set(known))
            if unknown:
                raise ValueError(f"{stage}: unknown rail(s) {', '.join(unknown)}; {stage} rails: {', '.join(known)}")
            for name, rail in rails.items():
                if rail.action == "redact" and name not in PII_RAILS:
                    raise ValueError(f"{stage}.{name}: action redact is for the PII rails only "
                                     f"(use allow, block, escalate or block_escalate)")
                if name == "topics" and rail.enabled and not rail.categories:
                    rail.categories = list(TOPICS)
        return self

    def rails(self, stage: str) -> list[tuple[str, Rail]]:
        """The enabled rails of `stage` (input or output), in the order they run."""
        order, rails = (INPUT_RAILS, self.input) if stage == "input" else (OUTPUT_RAILS, self.output)
        return [(name, rails[name]) for name in order if name in rails and rails[name].enabled]

    def message(self, rail_name: str, rail: Rail, category: str = "") -> str:
        if category and category in rail.messages:
            return rail.messages[category]
        return rail.message or DEFAULT_MESSAGES.get(rail_name, "I can't help with that.")


def parse(text: str, application: str = "") -> PolicyDocument:
    """Parse and validate policy YAML; InvalidArgument saying what is wrong (with the field's path)."""
    if not text.strip():
        raise InvalidArgument("the policy YAML is empty")
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"the policy is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("the policy YAML must be a mapping (application:, input:, output:, ...)")
    try:
        document = PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid policy: {problems}") from None
    if application:
        if document.application and document.application != application:
            raise InvalidArgument(f"the YAML is for application {document.application!r}, not {application!r}")
        document.application = application
    if not document.application:
        raise InvalidArgument("name the application (in the request or as `application:` in the YAML)")
    if not document.input and not document.output:
        raise InvalidArgument("the policy has no rails: add input: and/or output: rails")
    return document
