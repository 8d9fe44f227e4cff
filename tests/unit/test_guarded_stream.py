"""GuardedStream's window bookkeeping with a scripted guard (the real guard end to end:
tests/integration/test_inference_guarded.py): held characters go into the next window, `passed_text` is the raw text
passed, `final` only on the last window, a blocked window stops the stream and cancels the model, a guard that is
down fails closed or open per the policy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flywheel.common.clients.ports import ContentGuard, GuardPolicy, GuardVerdict
from flywheel.common.errors import Unavailable
from flywheel.inference.apps.guarded import Guarding, GuardUnavailable, InputCheck
from flywheel.inference.llm.engine import Completion, GenerationChunk, Usage


def verdict(text: str, *, blocked: bool = False, hold: int = 0) -> GuardVerdict:
    return GuardVerdict(verdict_id="v", action="block" if blocked else "allow", blocked=blocked, escalated=False,
                        text="" if blocked else text, rule="output.pii_leak" if blocked else "", category="",
                        message="sorry", application="p", policy_version=1, hold_chars=hold)


@dataclass
class ScriptedGuard(ContentGuard):
    """Holds a trailing run of digits (it may continue); masks 4+ digit runs; blocks a window holding BLOCK."""

    down: bool = False
    calls: list[tuple[str, str, bool]] = field(default_factory=list)

    async def check_input(self, application: str, text: str, *, request_id: str = "", context: Any = ()) -> Any:
        raise AssertionError("a GuardedStream checks output only: check_input must not be called")

    async def check_output(self, application: str, text: str, *, request_id: str = "", user_input: str = "",
                           context: Any = (), passed_text: str = "", final: bool = True) -> GuardVerdict:
        if self.down:
            raise Unavailable("guard down")
        self.calls.append((text, passed_text, final))
        if "BLOCK" in passed_text[-8:] + text:  # the real guard also reads the tail of what passed
            return verdict(text, blocked=True)
        hold = 0 if final else len(text) - len(text.rstrip("0123456789"))
        kept = text[:len(text) - hold]
        return verdict(re.sub(r"\d{4,}", "[N]", kept), hold=hold)

    async def policy(self, application: str) -> GuardPolicy | None:
        return None


@dataclass
class Model:
    text: str
    piece: int = 3
    cancelled: bool = False
    model: Any = "m"
    prompt_tokens: int = 1
    max_tokens: int = 10

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[GenerationChunk]:
        pieces = [self.text[i:i + self.piece] for i in range(0, len(self.text), self.piece)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield GenerationChunk(piece, [i], "stop" if last else None, Usage(1, len(pieces)) if last else None)

    async def collect(self) -> Completion:
        return Completion(self.text, [1], "stop", Usage(1, 1), 0.0, 0.0)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class App:
    name: str = "app"
    guard_policy: str = "p"


def stream(guard: ScriptedGuard, model: Model, *, fail_closed: bool = True, window: int = 10) -> Any:
    policy = GuardPolicy(application="p", version=1, fail_closed=fail_closed, stream_window_chars=window,
                         blocked_input_response="completion", check_timeout_ms=1000)
    checked = InputCheck(policy, [{"role": "user", "content": "q"}])
    return Guarding(guard).stream(model, App(), checked, request_id="r")


async def released(s: Any) -> tuple[str, list[str | None]]:
    chunks = [c async for c in s]
    return "".join(c.text for c in chunks), [c.finish_reason for c in chunks if c.finish_reason]


async def test_held_digits_go_into_the_next_window_and_a_number_never_passes_in_pieces() -> None:
    guard = ScriptedGuard()
    text, finish = await released(stream(guard, Model("the number is 12345678 ok, bye now")))
    assert text == "the number is [N] ok, bye now" and finish == ["stop"]
    passed = ""
    for window, passed_text, final in guard.calls:
        assert passed_text == passed
        passed += window if final else window.rstrip("0123456789")
    assert [final for *_, final in guard.calls] == [False] * (len(guard.calls) - 1) + [True]


async def test_a_blocked_window_stops_the_stream_and_the_model() -> None:
    model = Model("all fine here. then BLOCK this and a tail that must not pass")
    s = stream(ScriptedGuard(), model)
    text, finish = await released(s)
    assert finish == ["content_filter"] and "BLOCK" not in text and "tail" not in text
    assert "all fine here. then BLOCK".startswith(text) and model.cancelled
    assert s.state.blocked is not None and s.log_params["guard_output_rule"] == "output.pii_leak"


async def test_non_streaming_is_checked_once() -> None:
    guard = ScriptedGuard()
    completion = await stream(guard, Model("card 12345678")).collect()
    assert completion.text == "card [N]" and guard.calls == [("card 12345678", "", True)]
    blocked = await stream(ScriptedGuard(), Model("BLOCK me")).collect()
    assert (blocked.text, blocked.finish_reason) == ("sorry", "content_filter")


async def test_a_guard_down_fails_closed_or_open_per_the_policy() -> None:
    with pytest.raises(GuardUnavailable):
        await released(stream(ScriptedGuard(down=True), Model("some answer text here")))
    s = stream(ScriptedGuard(down=True), Model("some answer text here"), fail_closed=False)
    text, finish = await released(s)
    assert text == "some answer text here" and finish == ["stop"] and s.state.unchecked_windows >= 1
