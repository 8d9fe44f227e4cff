"""Topic consumers of the feature store: features.updates rows go to their push source's offline table and
the online store, a fetched batch at a time (one transaction and one Feast push per push source)."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler
from flywheel.common.topics import FEATURES_UPDATES, Topic
from flywheel.featurestore.features import Features
from flywheel.proto.events.v1.features_pb2 import FeaturesUpdated


def batch_handlers(features: Features) -> dict[Topic, BatchHandler]:
    async def on_features_updated(events: list[Event], conn: AsyncConnection) -> None:
        updates = []
        for event in events:
            assert isinstance(event.payload, FeaturesUpdated)
            # Without an event_time the row is timed by the event itself (CloudEvents `time`).
            updates.append((event.id, event.payload, event.time))
        await features.apply_updates(conn, updates)

    return {FEATURES_UPDATES: on_features_updated}
