"""The driver's narration: the loop's events (drift, retraining, registrations, evaluations, promotions) read
from their topics, printed as one console line each and kept for the status page."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

# Platform events the driver narrates on its console and shows on its status page.
WATCHED_TOPICS = ("drift.detected", "retrain.requests", "models.registered", "evaluations.completed",
                  "models.promoted")


def describe_event(topic_name: str, payload: Any) -> str:
    """One console line for a platform event, in words a person watching the demo follows."""
    from flywheel.proto.events.v1 import models_pb2, monitoring_pb2

    if topic_name == "drift.detected":
        drifted = [f.feature for f in payload.features if f.drifted]
        perf = ", ".join(f"{k}={v:.3f}" for k, v in sorted(payload.performance.items()))
        return (f"ALERT drift on {payload.model.name}:v{payload.model.version} "
                f"({monitoring_pb2.DriftSeverity.Name(payload.severity).removeprefix('DRIFT_SEVERITY_').lower()}):"
                f" {payload.drifted_share:.0%} of features drifted ({', '.join(drifted[:5]) or 'none'})"
                + (f"; {perf}" if perf else ""))
    if topic_name == "retrain.requests":
        reason = models_pb2.RetrainReason.Name(payload.reason).removeprefix("RETRAIN_REASON_").lower()
        return f"RETRAIN requested for {payload.model_name} ({reason}), parent v{payload.parent.version}"
    if topic_name == "models.registered":
        metrics = ", ".join(f"{k}={payload.metrics[k]:.3f}" for k in ("roc_auc", "f1") if k in payload.metrics)
        return f"REGISTERED {payload.model.name}:v{payload.model.version}" + (f" ({metrics})" if metrics else "")
    if topic_name == "evaluations.completed":
        verdict = models_pb2.EvaluationVerdict.Name(payload.verdict).removeprefix("EVALUATION_VERDICT_")
        failed = [c.name for c in payload.checks if not c.passed]
        return (f"EVALUATED {payload.model_name}:v{payload.candidate_version} vs v{payload.baseline_version}: "
                f"{verdict}" + (f" (failed: {', '.join(failed)})" if failed else ""))
    if topic_name == "models.promoted":
        reason = models_pb2.PromotionReason.Name(payload.reason).removeprefix("PROMOTION_REASON_").lower()
        return (f"PROMOTED {payload.model_name}@{payload.alias}: v{payload.previous_version} -> v{payload.version} "
                f"({reason}, by {payload.actor or 'unknown'})")
    return f"{topic_name}: {payload}"


def event_record(topic_name: str, payload: Any, at: float) -> dict[str, Any]:
    """The JSON the status page shows for an event (plus the console line)."""
    from google.protobuf.json_format import MessageToDict

    return {"topic": topic_name, "at": at, "text": describe_event(topic_name, payload),
            "event": MessageToDict(payload, preserving_proto_field_name=True)}


class Narration:
    """Follows the watched topics and keeps the last events; a promotion of `model`'s champion also becomes
    a plot marker (`markers` is the driver's list, shared with the live traffic's drift onset)."""

    def __init__(self, model: str, *, bootstrap_servers: str, group_id: str, markers: list[dict[str, Any]],
                 keep: int = 200) -> None:
        self.model = model
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.markers = markers
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)

    async def consume(self, ready: asyncio.Event) -> None:
        """Read the watched topics from their latest offsets (a group of its own) and narrate each event.

        The narration is a view that follows the topics on its own schedule, not the platform's record, and
        it keeps going: an event it cannot read or describe (e.g. an enum value newer than this demo) is
        skipped and a broker error retried, both logged, instead of ending the narration for the session."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        from flywheel.common.events import decode
        from flywheel.common.kafka import stop_consumer
        from flywheel.common.topics import topic

        consumer = AIOKafkaConsumer(*WATCHED_TOPICS, bootstrap_servers=self.bootstrap_servers,
                                    group_id=self.group_id, auto_offset_reset="latest",
                                    enable_auto_commit=True, session_timeout_ms=10_000,
                                    heartbeat_interval_ms=1_000)
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            for tp in consumer.assignment():  # "latest" must mean now, also for partitions without commits
                await consumer.position(tp)
            ready.set()
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    log.warning(f"events: {exc!r}; still listening")
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        try:
                            event = decode(topic(record.topic), record.key, record.value, record.headers)
                            self.on_event(record.topic, event.payload)
                        except Exception as exc:
                            log.warning(f"event on {record.topic} not narrated: {exc!r}")
        finally:
            ready.set()
            await stop_consumer(consumer)

    def on_event(self, topic_name: str, payload: Any) -> None:
        """Narrate one platform event and keep it for the status page (promotions become plot markers)."""
        entry = event_record(topic_name, payload, time.time())
        self.events.append(entry)
        if topic_name == "models.promoted" and payload.alias == "champion" and payload.model_name == self.model:
            self.markers.append({"kind": "promotion", "t": entry["at"], "version": payload.version,
                                 "label": f"v{payload.version} promoted"})
        log.info(entry["text"])
