"""Keeping long-running parts alive and saying whether they are: restart delays, the crash-loop
limit of `make run`, and the board of component health that a service's gRPC health reads.

Pure logic (no asyncio, no gRPC, no processes), so it is unit-tested with explicit clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

# Reports one component's health: True = working, False = down (restarting, crashed).
HealthReporter = Callable[[bool], None]


class Backoff:
    """Exponential restart delays: `initial`, doubled after every failure in a row, at most `cap`.

    A thing that ran at least `reset_after` seconds before failing again starts over from
    `initial`: a crash once a day is not a crash loop. One instance per supervised thing.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0, reset_after: float = 60.0) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"need 0 < initial <= cap, got initial={initial} cap={cap}")
        self.initial = initial
        self.cap = cap
        self.reset_after = reset_after
        self.failures = 0

    def delay(self, ran_for: float) -> float:
        """The wait before the next start, after a failure of something that ran `ran_for` seconds."""
        if ran_for >= self.reset_after:
            self.failures = 0
        delay = min(self.cap, self.initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay


class CrashLoopPolicy:
    """When to restart a crashed process and when to give up, like a compose restart policy or a
    Kubernetes CrashLoopBackOff, but one that ends: `max_crashes` crashes within `window` seconds
    is a crash loop, and restarting it again would only hide the problem.

    Restart delays come from a `Backoff` that starts over once the process ran `window` seconds.
    """

    def __init__(self, max_crashes: int = 5, window: float = 120.0, initial_delay: float = 1.0,
                 max_delay: float = 30.0) -> None:
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.max_crashes = max_crashes
        self.window = window
        self.backoff = Backoff(initial_delay, max_delay, reset_after=window)
        self.crashes: deque[float] = deque()

    def on_crash(self, now: float, ran_for: float) -> float | None:
        """Record a crash at `now` (monotonic seconds) of a process that had run `ran_for` seconds.
        Returns the delay before restarting it, or None when it is crash-looping: give up."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.window:
            self.crashes.popleft()
        if len(self.crashes) >= self.max_crashes:
            return None
        return self.backoff.delay(ran_for)

    def recent_crashes(self) -> int:
        """Crashes inside the current window (as of the last `on_crash`)."""
        return len(self.crashes)


class HealthBoard:
    """One health flag per component of a process (a consumer, an outbox relay), and their sum.

    `reporter(name)` registers a component and returns the function it calls with True (working)
    or False (down). A registered component counts as down until it first reports, so a part that
    was wired but never started keeps the process out of rotation. `healthy` is True when every
    registered component says so (and when there are none). Listeners are called on every change
    (a registration included).
    Use it from one thread (the event loop's).
    """

    def __init__(self) -> None:
        self.components: dict[str, bool] = {}
        self._listeners: list[Callable[[], None]] = []

    def reporter(self, name: str) -> HealthReporter:
        if name in self.components:
            raise ValueError(f"component {name!r} already reports to this health board")
        self.components[name] = False
        self._changed()

        def report(healthy: bool) -> None:
            if self.components[name] != healthy:
                self.components[name] = healthy
                self._changed()
        return report

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    @property
    def healthy(self) -> bool:
        return all(self.components.values())

    def down(self) -> list[str]:
        """The names of the components that are down, for logs and error messages."""
        return sorted(n for n, ok in self.components.items() if not ok)
