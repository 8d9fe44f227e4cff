"""The guard's use case: check a user's input or a model's output (whole, or one streamed window)
against the application's current policy with the current detectors, and record the verdict.

No gRPC, Kafka or SQL here: policies come from a `PolicySource`, detectors from a `DetectorSource`,
and verdicts go to a `VerdictRecorder` (the audit trail and, for escalations, human review).
"""

from __future__ import annotations

import abc
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from flywheel.common import grounding, pii
from flywheel.common.errors import InvalidArgument, Unavailable
from flywheel.guard.detectors import Detectors
from flywheel.guard.policy import BLOCKING, ESCALATING, PolicyDocument, Rail
from flywheel.guard.signals import Signals, signals

INPUT, OUTPUT = "input", "output"
ALLOW, REDACT, BLOCK, ESCALATE = "allow", "redact", "block", "escalate"
MAX_TEXT_CHARS = 32_000
MAX_CONTEXT_CHUNKS = 64
MAX_CONTEXT_CHARS = 200_000
# Streaming: how much of the already passed text is read again with a window (a PII value or a sentence
# across the boundary), and the most a caller is asked to hold back at the end of a window.
PII_TAIL_CHARS = 64
CLASSIFY_TAIL_CHARS = 200
MAX_HOLD_CHARS = 48
# The end of a window that may be the start of an identifier: tokens with a digit or an @, or the last word.
HOLD = re.compile(r"(?:[+(]?[\w.%+@()-]*[\d@][\w.%+@()-]*[ -]?){1,8}$|\S+$")

CHECKS = Counter("flywheel_guard_checks_total", "Checks answered.", ["application", "stage", "action"])
RAILS_FIRED = Counter("flywheel_guard_rails_fired_total", "Rails that fired.", ["application", "rail"])
CHECK_SECONDS = Histogram("flywheel_guard_check_seconds", "Time to decide a check (without the audit write).",
                          ["stage"], buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
RAIL_SECONDS = Histogram("flywheel_guard_rail_seconds", "Time one rail takes.", ["rail"],
                         buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))


@dataclass(frozen=True)
class ContextChunk:
    chunk_id: str = ""
    document_id: str = ""
    title: str = ""
    text: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class CheckRequest:
    stage: str
    application: str
    text: str
    request_id: str = ""
    context: tuple[ContextChunk, ...] = ()
    # Output only: what the user said, the streamed text already passed, whether more windows follow.
    user_input: str = ""
    passed_text: str = ""
    final: bool = True
    # Who asked (the caller's token principal), for the audit trail.
    principal: str = ""

    @property
    def stream_window(self) -> bool:
        return bool(self.passed_text) or not self.final


@dataclass(frozen=True)
class RailOutcome:
    rail: str
    score: float
    fired: bool
    action: str
    category: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int

    @property
    def replacement(self) -> str:
        return pii.REPLACEMENTS[self.kind]


@dataclass
class StoredPolicy:
    application: str
    version: int
    yaml: str
    document: PolicyDocument
    created_by: str = ""
    created_at: datetime | None = None


@dataclass
class Verdict:
    verdict_id: str
    stage: str
    action: str
    blocked: bool
    escalated: bool
    # The text to use (redacted where needed); empty when blocked.
    text: str
    spans: list[Span]
    rule: str
    category: str
    message: str
    rails: list[RailOutcome]
    application: str
    policy_version: int
    detectors: str
    latency_ms: float
    # Streaming: characters at the end of the window to hold back and send with the next window.
    hold_chars: int = 0
    # For the audit trail and review (never raw PII): the checked text with every PII kind masked.
    redacted_text: str = ""
    redacted_user_input: str = ""
    redacted_answer_so_far: str = ""
    request: CheckRequest | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def rails_fired(self) -> list[str]:
        return [r.rail for r in self.rails if r.fired]

    @property
    def scores(self) -> dict[str, float]:
        return {r.rail: r.score for r in self.rails}


class PolicySource(abc.ABC):
    @abc.abstractmethod
    async def current(self, application: str) -> StoredPolicy:
        """The application's newest policy; NotFound when it has none."""


class DetectorSource(abc.ABC):
    @abc.abstractmethod
    def detectors(self) -> Detectors:
        """The detectors serving now; Unavailable while none is loaded."""


class VerdictRecorder(abc.ABC):
    @abc.abstractmethod
    async def record(self, verdict: Verdict) -> None:
        """Put the verdict on the audit trail (and an escalation into review)."""


def _validate(request: CheckRequest) -> None:
    if not request.application.strip():
        raise InvalidArgument("application is required: name the application whose guard policy applies")
    if not request.text.strip() and request.final and not request.passed_text:
        raise InvalidArgument("text is empty: nothing to check")
    if len(request.text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"text is {len(request.text)} characters; the most one check takes is "
                              f"{MAX_TEXT_CHARS} (check a long output in windows)")
    if len(request.user_input) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"user_input is {len(request.user_input)} characters; at most {MAX_TEXT_CHARS}")
    if len(request.context) > MAX_CONTEXT_CHUNKS:
        raise InvalidArgument(f"{len(request.context)} context chunks; at most {MAX_CONTEXT_CHUNKS}")
    if sum(len(c.text) for c in request.context) > MAX_CONTEXT_CHARS:
        raise InvalidArgument(f"the context chunks hold more than {MAX_CONTEXT_CHARS} characters")
    if request.stage == INPUT and (request.passed_text or not request.final):
        raise InvalidArgument("passed_text and final are for output windows only")


class _Rails:
    """The rails of one check: each returns its outcome and may add spans to mask."""

    def __init__(self, detectors: Detectors, request: CheckRequest, document: PolicyDocument) -> None:
        self.detectors = detectors
        self.request = request
        self.document = document
        self.spans: list[Span] = []
        self._signals: Signals | None = None
        # What the classifiers read: an output window with the end of what passed before it.
        self.classified = (request.passed_text[-CLASSIFY_TAIL_CHARS:] + request.text) if request.stage == OUTPUT \
            else request.text

    @property
    def found(self) -> Signals:
        if self._signals is None:
            started = time.perf_counter()
            self._signals = signals(self.detectors, self.classified)
            RAIL_SECONDS.labels("classifiers").observe(time.perf_counter() - started)
        return self._signals

    def _head(self, name: str, head: str, rail: Rail) -> RailOutcome:
        score = self.found.scores[head]
        threshold = rail.threshold if rail.threshold is not None else self.detectors.thresholds[head]
        fired = score >= threshold
        rules = self.found.matched.get(head, [])
        detail = f"score {score:.2f} >= {threshold:.2f}" if fired else ""
        if fired and rules:
            detail += f" (rules: {', '.join(rules)})"
        return RailOutcome(name, round(score, 4), fired, rail.action, head if fired else "", detail)

    def injection(self, name: str, rail: Rail) -> RailOutcome:
        return self._head(name, "injection", rail)

    def toxicity(self, name: str, rail: Rail) -> RailOutcome:
        return self._head(name, "toxicity", rail)

    def topics(self, name: str, rail: Rail) -> RailOutcome:
        best: RailOutcome | None = None
        for category in rail.categories:
            outcome = self._head(name, category, rail)
            if best is None or (outcome.fired, outcome.score) > (best.fired, best.score):
                best = outcome
        assert best is not None
        return best

    def pii(self, name: str, rail: Rail) -> RailOutcome:
        found = pii.find_pii(self.request.text, rail.kinds)
        return self._pii_outcome(name, rail, [Span(s.kind, s.start, s.end) for s in found], "found")

    def pii_leak(self, name: str, rail: Rail) -> RailOutcome:
        request = self.request
        tail = request.passed_text[-PII_TAIL_CHARS:]
        found = pii.find_pii(tail + request.text, rail.kinds)
        supplied = {s.normalized for s in pii.find_pii(request.user_input, rail.kinds)}
        if rail.allow_from_context:
            for chunk in request.context:
                supplied |= {s.normalized for s in pii.find_pii(chunk.text, rail.kinds)}
        offset = len(tail)
        leaks = [Span(s.kind, max(0, s.start - offset), s.end - offset) for s in found
                 if s.end > offset and s.normalized not in supplied]
        return self._pii_outcome(name, rail, leaks, "not supplied by the user")

    def _pii_outcome(self, name: str, rail: Rail, spans: list[Span], what: str) -> RailOutcome:
        if rail.action in ("redact", "escalate"):
            self.spans.extend(spans)
        kinds = sorted({s.kind for s in spans})
        detail = f"{len(spans)} PII span(s) {what}: {', '.join(kinds)}" if spans else ""
        return RailOutcome(name, 1.0 if spans else 0.0, bool(spans), rail.action, ",".join(kinds), detail)

    def groundedness(self, name: str, rail: Rail) -> RailOutcome:
        request = self.request
        sources = [c.text for c in request.context if c.text.strip()]
        if not sources:
            return RailOutcome(name, 0.0, False, rail.action, "", "no context chunks: not judged")
        passed = request.passed_text
        bounds = grounding.sentences(passed)
        # The unfinished sentence at the end of what passed is finished (and judged) in this window.
        carry_from = bounds[-1][0] if bounds and not re.search(r"[.!?\n]\s*$", passed) else len(passed)
        combined = passed[carry_from:] + request.text
        parts = grounding.sentences(combined)
        if not request.final and parts and not re.search(r"[.!?\n]\s*$", combined):
            parts = parts[:-1]  # still being written: judged with a later window
        if not parts:
            return RailOutcome(name, 0.0, False, rail.action, "", "no finished sentence yet")
        score, judged = self.detectors.ungrounded([combined[s:e] for s, e in parts], [*sources, request.user_input])
        threshold = rail.threshold if rail.threshold is not None else self.detectors.grounding_threshold
        fired = score >= threshold
        weakest = min((s.support for s in judged.sentences), default=1.0)
        detail = (f"{judged.judged} sentence(s) judged; weakest support {weakest:.2f}, "
                  f"{sum(s.unsupported_numbers for s in judged.sentences)} unsupported number(s)")
        return RailOutcome(name, round(score, 4), fired, rail.action, "ungrounded" if fired else "", detail)


def _hold(text: str) -> int:
    match = HOLD.search(text)
    return min(len(match.group()), MAX_HOLD_CHARS) if match else 0


def _merged(spans: list[Span]) -> list[Span]:
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def _apply(text: str, spans: list[Span]) -> str:
    return pii.redact(text, [pii.PiiSpan(s.kind, s.start, s.end, "") for s in spans])


def redact_all(text: str) -> str:
    """`text` with every PII kind masked (what the audit trail and review may carry)."""
    return pii.redact(text, pii.find_pii(text)) if text else ""


class Guard:
    def __init__(self, policies: PolicySource, detectors: DetectorSource, recorder: VerdictRecorder) -> None:
        self.policies = policies
        self.detector_source = detectors
        self.recorder = recorder

    async def check(self, request: CheckRequest) -> Verdict:
        _validate(request)
        policy = await self.policies.current(request.application.strip())
        detectors = self.detector_source.detectors()
        started = time.perf_counter()
        verdict = decide(detectors, policy, request)
        elapsed = time.perf_counter() - started
        verdict.latency_ms = round(elapsed * 1000, 3)
        CHECK_SECONDS.labels(request.stage).observe(elapsed)
        CHECKS.labels(policy.application, request.stage, verdict.action).inc()
        for name in verdict.rails_fired:
            RAILS_FIRED.labels(policy.application, name).inc()
        await self.recorder.record(verdict)
        return verdict


def decide(detectors: Detectors, policy: StoredPolicy, request: CheckRequest) -> Verdict:
    """Run the policy's rails of the request's stage and combine them into one verdict (pure)."""
    document = policy.document
    rails = _Rails(detectors, request, document)
    outcomes: list[RailOutcome] = []
    for name, rail in document.rails(request.stage):
        started = time.perf_counter()
        outcome = getattr(rails, name)(f"{request.stage}.{name}", rail)
        RAIL_SECONDS.labels(f"{request.stage}.{name}").observe(time.perf_counter() - started)
        outcomes.append(outcome)
    fired = [o for o in outcomes if o.fired]
    blocking = [o for o in fired if o.action in BLOCKING]
    escalating = [o for o in fired if o.action in ESCALATING]
    spans = _merged(rails.spans)
    blocked, escalated = bool(blocking), bool(escalating)
    cause = (blocking or escalating or [o for o in fired if o.action == "redact"] or [None])[0]
    rule = cause.rail if cause else ""
    category = cause.category if cause else ""
    message = ""
    if blocked and cause is not None:
        rail_name = cause.rail.split(".", 1)[1]
        rail = (document.input if request.stage == INPUT else document.output)[rail_name]
        message = document.message(rail_name, rail, cause.category)
    if escalated:
        action = ESCALATE
    elif blocked:
        action = BLOCK
    elif spans:
        action = REDACT
    else:
        action = ALLOW
    # Streaming: the end of a window that may be the start of an identifier is not passed now; the caller
    # sends it again at the start of the next window (so a card number split across two windows is masked).
    hold = _hold(request.text) if request.stage == OUTPUT and not request.final and not blocked else 0
    cut = len(request.text) - hold
    for span in spans:
        if span.start < cut < span.end:
            cut = span.start
    hold = len(request.text) - cut
    passing = [s for s in spans if s.end <= cut]
    redacted = _apply(request.text[:cut], passing) if passing else request.text[:cut]
    verdict = Verdict(
        verdict_id=str(uuid.uuid4()), stage=request.stage, action=action, blocked=blocked, escalated=escalated,
        text="" if blocked else redacted, spans=passing, rule=rule, category=category, message=message,
        rails=outcomes, application=policy.application, policy_version=policy.version, detectors=detectors.ref,
        latency_ms=0.0, hold_chars=hold, request=request)
    verdict.redacted_text = redact_all(request.text)
    if escalated:
        verdict.redacted_user_input = redact_all(request.user_input)
        verdict.redacted_answer_so_far = redact_all(request.passed_text + request.text)
    return verdict


__all__ = ["ALLOW", "BLOCK", "ESCALATE", "INPUT", "OUTPUT", "REDACT", "CheckRequest", "ContextChunk", "Guard",
           "RailOutcome", "Span", "StoredPolicy", "Unavailable", "Verdict", "decide", "redact_all"]
