"""Events on the wire: a protobuf payload with CloudEvents binary-mode headers.

Headers carry `ce_id`, `ce_type`, `ce_source`, `ce_time`, `ce_specversion`,
`content-type` and the W3C `traceparent`, so a trace follows a request through
every topic. The event id is fixed when the event is created (in the outbox), so
a redelivered event keeps its id and consumers can drop duplicates by it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from google.protobuf.message import DecodeError, Message

from flywheel.common.errors import PoisonEvent
from flywheel.common.topics import Topic

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
Headers = list[tuple[str, bytes]]

# Event ids: random UUIDs (version 4) from a generator seeded by the OS once per process (and again in a
# forked child), instead of an os.urandom call per event: an id needs uniqueness, not secrecy.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_hex_id() -> str:
    """128 random bits as 32 hex digits (a request id)."""
    return f"{_ids.getrandbits(128):032x}"


def new_event_id() -> str:
    """A random UUID (version 4), e.g. for an event id or a request id."""
    n = (_ids.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Event:
    """One fact on one topic."""

    topic: Topic
    key: str
    payload: Message
    source: str
    id: str = field(default_factory=new_event_id)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    traceparent: str = ""
    # Extra headers (e.g. the error of a dead-lettered event).
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> Headers:
        ce_type, ce_source = _constant_headers(self.topic.event_type, self.source)
        headers = [("ce_id", self.id.encode()), ce_type, ce_source, ("ce_time", self.time.isoformat().encode()),
                   _SPEC_VERSION, _CONTENT_TYPE]
        if self.traceparent:
            headers.append(("traceparent", self.traceparent.encode()))
        headers.extend((k, v.encode()) for k, v in self.extra.items())
        return headers

    def encode(self) -> tuple[bytes, bytes, Headers]:
        """(key, value, headers) as they go to Kafka."""
        return self.key.encode(), self.payload.SerializeToString(), self.headers()


_SPEC_VERSION = ("ce_specversion", SPEC_VERSION.encode())
_CONTENT_TYPE = ("content-type", CONTENT_TYPE.encode())


@lru_cache(maxsize=1024)
def _constant_headers(event_type: str, source: str) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    return ("ce_type", event_type.encode()), ("ce_source", source.encode())


def header_map(headers: Headers | tuple) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers}


def decode(topic: Topic, key: bytes | None, value: bytes | None, headers: Headers | tuple) -> Event:
    """Parse a Kafka record; raises PoisonEvent when it is not a valid event of `topic`."""
    h = header_map(headers)
    missing = [name for name in ("ce_id", "ce_type", "ce_source") if not h.get(name)]
    if missing:
        raise PoisonEvent(f"missing CloudEvents header(s) {', '.join(missing)}")
    if h["ce_type"] != topic.event_type:
        raise PoisonEvent(f"ce_type {h['ce_type']!r} does not belong on {topic.name} (expects {topic.event_type})")
    payload = topic.message()
    try:
        payload.ParseFromString(value or b"")
    except DecodeError as exc:
        raise PoisonEvent(f"payload is not a valid {topic.event_type}: {exc}") from exc
    try:
        time = datetime.fromisoformat(h["ce_time"]) if h.get("ce_time") else datetime.now(UTC)
    except ValueError as exc:
        raise PoisonEvent(f"ce_time {h['ce_time']!r} is not an ISO-8601 time") from exc
    known = {"ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion", "content-type", "traceparent"}
    return Event(
        topic=topic, key=(key or b"").decode("utf-8", "replace"), payload=payload, source=h["ce_source"],
        id=h["ce_id"], time=time, traceparent=h.get("traceparent", ""),
        extra={k: v for k, v in h.items() if k not in known},
    )
