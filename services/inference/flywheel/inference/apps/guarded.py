"""Guarded applications: the guard's input and output rails in the generation path (no HTTP, gRPC or SQL here).

An application whose `guard_policy` names a policy in the guard service is guarded:

1. **Input**, before retrieval, generation and the response cache: the last user turn goes to `CheckInput` with the
   policy's `check_timeout_ms`. Blocked: the doors answer per the policy's `blocked_input_response` (`error`: HTTP
   400 code `content_filter`; `completion`: the policy's message with finish_reason `content_filter`); the model
   never runs. Otherwise the verdict's text (PII masked) replaces the user's turn for retrieval, generation and logs.
2. **Output**, before anything leaves: `GuardedStream` wraps a generation and releases only checked text. Streamed,
   it checks windows of the policy's `stream.window_chars` (`passed_text`: the raw text already passed, `final` on
   the last window, the redacted question as `user_input`, the passages in the prompt as context), releases each
   verdict's text (a leak masked) and carries the `hold_chars` the guard did not pass into the next window. A
   blocked window ends the stream with finish_reason `content_filter`: nothing after the last passed window reaches
   the client. `collect()` (non-streaming) checks the whole answer once.
3. **Guard down or slower than the policy allows**: `fail_closed` policies refuse (`GuardUnavailable`, an
   Unavailable: HTTP 503 / gRPC UNAVAILABLE), never an unchecked answer; others go on unchecked, counted in
   `flywheel_inference_guard_unchecked_total`. An application whose policy cannot be fetched at all (guard down, no
   copy cached) is refused: its fail_closed is unknown, so it is taken as true.

Policies are cached for `policy_ttl_s` (the guard hot-reloads them; a changed fail_closed or window size is seen
within that time); when a refresh fails the cached copy keeps applying. `guard_addr` empty turns guarding off on
the server (named policies are then not applied: counted as unchecked, logged once per application).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from flywheel.common.clients.ports import ContentGuard, GuardChunk, GuardPolicy, GuardVerdict
from flywheel.common.errors import FlywheelError, NotFound, Unavailable
from flywheel.common.tasks import within

log = logging.getLogger(__name__)

CONTENT_FILTER = "content_filter"
VERDICT_HEADER = "x-flywheel-guard-verdict"
OUTPUT_VERDICT_HEADER = "x-flywheel-guard-output-verdict"
CHECKS = Counter("flywheel_inference_guard_checks_total", "Guard checks inference made.",
                 ["application", "stage", "outcome"])
UNCHECKED = Counter("flywheel_inference_guard_unchecked_total",
                    "Inputs or output windows that went on unchecked (guard down or slow, policy not fail_closed, "
                    "or no guard configured).", ["application", "stage", "reason"])


class GuardUnavailable(Unavailable):
    """The guard could not check a request of a fail_closed application: refuse, never answer unchecked."""


@dataclass
class InputCheck:
    """What the input rail decided for one request."""

    policy: GuardPolicy | None  # None: not guarded
    messages: list[dict[str, str]]  # to use from here on: the last user turn redacted
    verdict: GuardVerdict | None = None  # None: not guarded, or the guard was not reachable (fail open)
    unchecked: bool = False

    @property
    def guarded(self) -> bool:
        return self.policy is not None

    @property
    def blocked(self) -> bool:
        return self.verdict is not None and self.verdict.blocked

    @property
    def question(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""

    @property
    def as_error(self) -> bool:
        return self.policy is not None and self.policy.blocked_input_response == "error"

    def message(self) -> str:
        assert self.verdict is not None
        return self.verdict.message or "This request was blocked by the application's content policy."

    def to_json(self) -> dict[str, Any] | None:
        if self.policy is None:
            return None
        out: dict[str, Any] = {"policy": self.policy.application, "policy_version": self.policy.version,
                               "input": verdict_json(self.verdict) if self.verdict is not None else None}
        if self.unchecked:
            out["input_unchecked"] = True
        return out


def guard_parameters(checked: InputCheck) -> dict[str, str]:
    """The generation log's guard_* parameters of the input check (ids and names only: no text)."""
    if checked.policy is None:
        return {}
    out = {"guard_policy": checked.policy.application, "guard_policy_version": str(checked.policy.version)}
    if checked.verdict is not None:
        out |= {"guard_input_verdict": checked.verdict.verdict_id,
                "guard_input_action": "block" if checked.verdict.blocked else checked.verdict.action}
        if checked.verdict.rule:
            out["guard_input_rule"] = checked.verdict.rule
    if checked.unchecked:
        out["guard_input_unchecked"] = "true"
    return out


def verdict_json(v: GuardVerdict) -> dict[str, Any]:
    return {"verdict_id": v.verdict_id, "action": v.action, "blocked": v.blocked, "escalated": v.escalated,
            "rule": v.rule, "category": v.category}


@dataclass
class _Cached:
    policy: GuardPolicy | None
    at: float


class Guarding:
    """Inference's side of the guard: policies of applications, input checks, guarded generations."""

    def __init__(self, guard: ContentGuard | None, *, timeout_s: float = 0.3, policy_ttl_s: float = 5.0) -> None:
        self.guard = guard
        self.timeout_s = timeout_s  # when a policy sets no check_timeout_ms
        self.policy_ttl_s = policy_ttl_s
        self._policies: dict[str, _Cached] = {}
        self._warned: set[str] = set()

    async def close(self) -> None:
        if self.guard is not None:
            await self.guard.close()

    def timeout(self, policy: GuardPolicy) -> float:
        return policy.check_timeout_ms / 1000.0 if policy.check_timeout_ms > 0 else self.timeout_s

    async def policy(self, app: Any) -> GuardPolicy | None:
        """The policy `app.guard_policy` names (None: not guarded). Raises GuardUnavailable when the guard cannot
        say and no copy is cached."""
        name = getattr(app, "guard_policy", "")
        if not name:
            return None
        if self.guard is None:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("application %s names guard policy %s but no guard is configured (FLYWHEEL_GUARD_ADDR "
                            "empty): its requests go unchecked", app.name, name)
            UNCHECKED.labels(app.name, "input", "no_guard").inc()
            return None
        cached = self._policies.get(name)
        now = time.monotonic()
        if cached is not None and now - cached.at < self.policy_ttl_s:
            return cached.policy
        try:
            policy = await within(self.guard.policy(name), self.timeout_s * 4)
        except (FlywheelError, TimeoutError) as exc:
            if cached is not None:  # the guard hiccupped: the copy we have still applies
                log.warning("guard policy %s not refreshed (%s); using version %s", name, exc,
                            cached.policy.version if cached.policy else None)
                return cached.policy
            raise GuardUnavailable(f"application {app.name!r} is guarded by policy {name!r}, but the guard could not "
                                   f"be asked for it ({exc}); refusing rather than answering unchecked") from None
        self._policies[name] = _Cached(policy, now)
        return policy

    async def check_input(self, app: Any, messages: list[dict[str, str]], *, request_id: str) -> InputCheck:
        """The input rail on the last user turn (earlier turns were checked when they were sent)."""
        policy = await self.policy(app)
        if policy is None or not messages or messages[-1].get("role") != "user":
            return InputCheck(policy, list(messages))  # a missing user turn is the grounding step's error to give
        assert self.guard is not None
        try:
            verdict = await within(
                self.guard.check_input(policy.application, messages[-1]["content"], request_id=request_id),
                self.timeout(policy))
        except (Unavailable, TimeoutError) as exc:
            return InputCheck(policy, list(messages), unchecked=self._unavailable(app, policy, "input", exc))
        except NotFound:  # the policy was deleted since it was cached: not guarded any more
            self._policies.pop(policy.application, None)
            return InputCheck(None, list(messages))
        CHECKS.labels(app.name, "input", "blocked" if verdict.blocked else verdict.action).inc()
        if verdict.blocked:
            return InputCheck(policy, list(messages), verdict)
        redacted = [*messages[:-1], {"role": "user", "content": verdict.text}]
        return InputCheck(policy, redacted, verdict)

    def _unavailable(self, app: Any, policy: GuardPolicy, stage: str, exc: BaseException) -> bool:
        """Fail closed (raise) or count an unchecked pass (returns True)."""
        reason = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
        CHECKS.labels(app.name, stage, reason).inc()
        if policy.fail_closed:
            detail = f"no answer within {self.timeout(policy) * 1000:.0f} ms" if reason == "timeout" else str(exc)
            raise GuardUnavailable(f"the guard could not check this {stage} of application {app.name!r} ({detail}); "
                                   f"policy {policy.application!r} fails closed: try again later") from None
        UNCHECKED.labels(app.name, stage, reason).inc()
        log.warning("guard %s check of %s skipped (%s): policy %s fails open", stage, app.name, reason,
                    policy.application)
        return True

    def stream(self, generation: Any, app: Any, checked: InputCheck, *, request_id: str,
               context: Sequence[GuardChunk] = (), log_params: dict[str, str] | None = None,
               whole: bool = False) -> GuardedStream:
        """`whole`: the client waits for the whole answer (non-streaming), so it is checked once, at its end."""
        assert checked.policy is not None and self.guard is not None
        return GuardedStream(generation, self, app, checked.policy, request_id=request_id,
                             user_input=checked.question, context=list(context), log_params=log_params, whole=whole)


def context_chunks(call: Any) -> list[GuardChunk]:
    """The passages in an application call's prompt (its citations), as the output rails' context."""
    cited = {c.chunk_id for c in call.citations}
    return [GuardChunk(text=c.text, chunk_id=c.chunk_id, document_id=c.document_id, title=c.title, score=c.score)
            for c in call.retrieved if c.chunk_id in cited]


@dataclass
class _Released:
    """A chunk as the doors see it (engine.GenerationChunk's fields)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    usage: Any = None
    time_to_first_token_s: float | None = None


@dataclass
class OutputState:
    verdicts: list[GuardVerdict] = field(default_factory=list)
    blocked: GuardVerdict | None = None
    unchecked_windows: int = 0

    def to_json(self) -> dict[str, Any]:
        last = self.blocked or (self.verdicts[-1] if self.verdicts else None)
        out: dict[str, Any] = {"output": verdict_json(last) if last is not None else None,
                               "output_checks": len(self.verdicts)}
        if any(v.escalated for v in self.verdicts):
            out["output_escalated"] = True
        if self.unchecked_windows:
            out["output_unchecked_windows"] = self.unchecked_windows
        return out

    def params(self) -> dict[str, str]:
        """The generation log's guard_output_* parameters (ids and names only: no text)."""
        out = {"guard_output_checks": str(len(self.verdicts))}
        last = self.blocked or (self.verdicts[-1] if self.verdicts else None)
        if last is not None:
            out["guard_output_verdict"] = last.verdict_id
            out["guard_output_action"] = "block" if last.blocked else last.action
            if last.rule:
                out["guard_output_rule"] = last.rule
        if self.unchecked_windows:
            out["guard_output_unchecked_windows"] = str(self.unchecked_windows)
        return out


class GuardedStream:
    """A Generation whose text leaves only once the guard passed it (see the module docstring). Same interface as
    llm.service.Generation: async iteration of chunks, `collect()`, `cancel()`, `async with`, `model`."""

    def __init__(self, generation: Any, guarding: Guarding, app: Any, policy: GuardPolicy, *, request_id: str,
                 user_input: str, context: list[GuardChunk], log_params: dict[str, str] | None = None,
                 whole: bool = False) -> None:
        self.generation = generation
        self.log_params = log_params if log_params is not None else {}  # updated as checks are made
        self.guarding = guarding
        self.app = app
        self.policy = policy
        self.request_id = request_id
        self.user_input = user_input
        self.context = context
        self.whole = whole
        self.window = sys.maxsize if whole else max(1, policy.stream_window_chars or 160)
        self.model = generation.model
        self.prompt_tokens = generation.prompt_tokens
        self.max_tokens = generation.max_tokens
        self.prompt_ids = list(getattr(generation, "prompt_ids", []) or [])
        self.state = OutputState()

    def guard_json(self) -> dict[str, Any]:
        return self.state.to_json()

    async def _check(self, text: str, passed: str, final: bool) -> GuardVerdict | None:
        """A verdict, or None when the guard was not reachable and the policy fails open."""
        assert self.guarding.guard is not None
        try:
            verdict = await within(self.guarding.guard.check_output(
                self.policy.application, text, request_id=self.request_id, user_input=self.user_input,
                context=self.context, passed_text=passed, final=final), self.guarding.timeout(self.policy))
        except (Unavailable, TimeoutError) as exc:
            self.guarding._unavailable(self.app, self.policy, "output", exc)
            self.state.unchecked_windows += 1
            self.log_params.update(self.state.params())
            return None
        CHECKS.labels(self.app.name, "output", "blocked" if verdict.blocked else verdict.action).inc()
        self.state.verdicts.append(verdict)
        if verdict.blocked:
            self.state.blocked = verdict
        self.log_params.update(self.state.params())
        return verdict

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        pending, passed, fresh, tokens = "", "", 0, []  # raw text not yet passed; raw text passed; new since check
        async for chunk in self.generation:
            pending += chunk.text
            fresh += len(chunk.text)
            tokens += list(chunk.token_ids)
            last = chunk.finish_reason is not None
            if not last and fresh < self.window:
                continue
            if not pending:  # nothing to check (an empty answer, or everything passed already)
                if last:
                    yield _Released("", tokens, chunk.finish_reason, chunk.usage, chunk.time_to_first_token_s)
                continue
            verdict = await self._check(pending, passed, last)
            fresh = 0
            if verdict is None:  # fail open (counted): release the raw window
                passed, release, pending = passed + pending, pending, ""
            elif verdict.blocked:
                self.generation.cancel()
                text = verdict.message if self.whole else ""  # streamed: what passed stays, the stream stops
                yield _Released(text, tokens, CONTENT_FILTER, chunk.usage if last else None,
                                chunk.time_to_first_token_s)
                return
            else:
                keep = len(pending) - verdict.hold_chars if not last else len(pending)
                passed, release, pending = passed + pending[:keep], verdict.text, pending[keep:]
            if last:
                yield _Released(release, tokens, chunk.finish_reason, chunk.usage, chunk.time_to_first_token_s)
                return
            if release:
                yield _Released(release, tokens)
                tokens = []

    async def collect(self) -> Any:
        completion = await self.generation.collect()
        if not completion.text:
            return completion
        verdict = await self._check(completion.text, "", True)
        if verdict is None:
            return completion
        if verdict.blocked:
            return dataclasses.replace(completion, text=verdict.message, finish_reason=CONTENT_FILTER)
        return dataclasses.replace(completion, text=verdict.text)

    def cancel(self) -> None:
        self.generation.cancel()

    async def __aenter__(self) -> GuardedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.generation.cancel()


def only_checked(recording: Any, guarded: GuardedStream) -> None:
    """Let the response cache's recording (cache.replay.RecordingGeneration, wrapping `guarded`) store a guarded
    answer only when every window of it was checked and passed: never one the output rails blocked (it would replay
    the cut), never one that went out unchecked (guard down, policy open). What it stores is what the client got:
    the released, redacted text."""
    remember = recording._on_finished
    if remember is None:
        return

    def on_finished(text: str, token_ids: list[int], finish_reason: str, usage: Any, extra: Any) -> None:
        if finish_reason != CONTENT_FILTER and guarded.state.blocked is None and not guarded.state.unchecked_windows:
            remember(text, token_ids, finish_reason, usage, {k: v for k, v in extra.items() if k != "guard"})
    recording._on_finished = on_finished
