"""Events on the wire (CloudEvents binary mode over protobuf) and the topic catalog."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from flywheel.common.errors import PoisonEvent
from flywheel.common.events import CONTENT_TYPE, SPEC_VERSION, Event, decode, header_map
from flywheel.common.topics import ALL_TOPICS, BY_NAME, MODELS_PROMOTED, MODELS_REGISTERED, topic
from flywheel.proto.events.v1 import models_pb2

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def promoted_event(**overrides: object) -> Event:
    values: dict[str, object] = dict(
        topic=MODELS_PROMOTED, key="fraud-scorer",
        payload=models_pb2.ModelPromoted(model_name="fraud-scorer", alias="champion", previous_version=1,
                                         version=2, actor="alice"),
        source="flywheel/registry", id="evt-123", time=datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
        traceparent=TRACEPARENT, extra={"x_tenant": "bank-a", "dlq_error": "ValueError: boom"},
    )
    values.update(overrides)
    return Event(**values)  # type: ignore[arg-type]


def valid_headers() -> list[tuple[str, bytes]]:
    _, _, headers = promoted_event().encode()
    return headers


def replace_header(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> list[tuple[str, bytes]]:
    """Headers with `name` set to `value`, or removed when `value` is None."""
    out = [(k, v) for k, v in headers if k != name]
    if value is not None:
        out.append((name, value))
    return out


# --- encode / decode -------------------------------------------------------------------------------------------------

def test_encode_decode_round_trip_keeps_every_field() -> None:
    event = promoted_event()
    key, value, headers = event.encode()

    assert key == b"fraud-scorer"
    h = header_map(headers)
    assert h["ce_id"] == "evt-123"
    assert h["ce_type"] == "flywheel.events.v1.ModelPromoted"
    assert h["ce_source"] == "flywheel/registry"
    assert h["ce_specversion"] == SPEC_VERSION == "1.0"
    assert h["content-type"] == CONTENT_TYPE == "application/protobuf"
    assert h["traceparent"] == TRACEPARENT

    back = decode(MODELS_PROMOTED, key, value, headers)
    assert back.topic is MODELS_PROMOTED
    assert back.id == event.id
    assert back.source == event.source
    assert back.key == event.key
    assert back.time == event.time and back.time.tzinfo is not None
    assert back.traceparent == TRACEPARENT
    assert back.extra == {"x_tenant": "bank-a", "dlq_error": "ValueError: boom"}
    assert back.payload == event.payload
    assert back.topic.event_type == event.topic.event_type


def test_decode_accepts_kafka_header_tuples_and_no_traceparent() -> None:
    event = promoted_event(traceparent="", extra={})
    key, value, headers = event.encode()
    assert "traceparent" not in dict(headers)
    back = decode(MODELS_PROMOTED, key, value, tuple(headers))  # aiokafka gives a tuple of pairs
    assert back.traceparent == "" and back.extra == {} and back.id == "evt-123"


def test_new_events_get_distinct_ids_and_an_aware_time() -> None:
    a = Event(MODELS_PROMOTED, "m", models_pb2.ModelPromoted(), "tests")
    b = Event(MODELS_PROMOTED, "m", models_pb2.ModelPromoted(), "tests")
    assert a.id and b.id and a.id != b.id
    assert a.time.tzinfo is not None


@pytest.mark.parametrize("missing", ["ce_id", "ce_type", "ce_source"])
def test_decode_rejects_missing_required_header(missing: str) -> None:
    event = promoted_event()
    key, value, _ = event.encode()
    with pytest.raises(PoisonEvent, match=f"missing CloudEvents header.*{missing}"):
        decode(MODELS_PROMOTED, key, value, replace_header(valid_headers(), missing, None))


def test_decode_rejects_empty_required_header() -> None:
    key, value, _ = promoted_event().encode()
    with pytest.raises(PoisonEvent, match="ce_id"):
        decode(MODELS_PROMOTED, key, value, replace_header(valid_headers(), "ce_id", b""))


def test_decode_names_every_missing_header() -> None:
    with pytest.raises(PoisonEvent) as info:
        decode(MODELS_PROMOTED, b"k", b"", [])
    assert all(name in str(info.value) for name in ("ce_id", "ce_type", "ce_source"))


def test_decode_rejects_event_type_of_another_topic() -> None:
    key, value, headers = promoted_event().encode()
    with pytest.raises(PoisonEvent) as info:
        decode(MODELS_REGISTERED, key, value, headers)
    message = str(info.value)
    assert "flywheel.events.v1.ModelPromoted" in message
    assert "models.registered" in message
    assert "flywheel.events.v1.ModelRegistered" in message


def test_decode_rejects_undecodable_payload() -> None:
    key, _, headers = promoted_event().encode()
    with pytest.raises(PoisonEvent, match=r"payload is not a valid flywheel\.events\.v1\.ModelPromoted"):
        decode(MODELS_PROMOTED, key, b"\xff\xff\xff", headers)


@pytest.mark.parametrize("bad_time", [b"yesterday", b"2025-13-45T99:00:00"])
def test_decode_rejects_bad_time(bad_time: bytes) -> None:
    key, value, _ = promoted_event().encode()
    with pytest.raises(PoisonEvent, match=r"ce_time .* is not an ISO-8601 time"):
        decode(MODELS_PROMOTED, key, value, replace_header(valid_headers(), "ce_time", bad_time))


# --- topic catalog ---------------------------------------------------------------------------------------------------

def test_topic_names_are_unique_and_dotted() -> None:
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names))
    assert set(BY_NAME) == set(names)
    for name in names:
        parts = name.split(".")
        assert len(parts) >= 2 and all(parts), name
        assert name == name.lower()


def test_every_topic_has_a_dlq_twin_not_in_the_catalog() -> None:
    for t in ALL_TOPICS:
        assert t.dlq == f"{t.name}.dlq"
        assert t.dlq not in BY_NAME
    assert len({t.dlq for t in ALL_TOPICS}) == len(ALL_TOPICS)


def test_event_type_is_the_full_protobuf_name_in_flywheel_events_v1() -> None:
    for t in ALL_TOPICS:
        assert t.event_type == t.message.DESCRIPTOR.full_name
        assert t.event_type == f"flywheel.events.v1.{t.message.__name__}"
        assert t.message.DESCRIPTOR.file.package == "flywheel.events.v1"
        assert t.partitions >= 1 and t.key


def test_topic_lookup_by_name() -> None:
    for t in ALL_TOPICS:
        assert topic(t.name) is t


def test_unknown_topic_raises_key_error_listing_known_topics() -> None:
    with pytest.raises(KeyError) as info:
        topic("nope")
    message = str(info.value)
    assert "'nope'" in message
    for t in ALL_TOPICS:
        assert t.name in message


class _ConsumerWhoseStopRaisesCancelled:
    """Stands in for an AIOKafkaConsumer hit by aio-libs/aiokafka#647: stop() closes it, then raises."""

    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        raise asyncio.CancelledError()


async def test_stop_consumer_drops_aiokafkas_own_cancellation_but_not_a_real_one() -> None:
    from flywheel.common.kafka import stop_consumer

    consumer = _ConsumerWhoseStopRaisesCancelled()
    await stop_consumer(consumer)  # type: ignore[arg-type]
    assert consumer.stopped

    # A cancellation of the caller itself still propagates.
    async def cancelled_during_stop() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await stop_consumer(_ConsumerWhoseStopRaisesCancelled())  # type: ignore[arg-type]

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(cancelled_during_stop())
