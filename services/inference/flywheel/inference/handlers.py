"""Topic consumers of the inference service: models.promoted triggers a hot swap (and tells the applications'
prompt templates that an alias moved).

The handler only schedules a reconcile of the model (download, load and warm run in the
background); it has no database effect beyond the runner's processed-event record.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import Handler
from flywheel.common.topics import MODELS_PROMOTED, Topic
from flywheel.inference.repository import Repository
from flywheel.proto.events.v1 import models_pb2

WATCHED_ALIASES = ("champion", "challenger")


def handlers(repository: Repository, *,
             on_alias_moved: Callable[[str, str], None] | None = None) -> dict[Topic, Handler]:
    """`on_alias_moved(model, alias)`: told of every alias move, whatever the alias (prompt templates of
    applications follow theirs this way)."""
    async def on_model_promoted(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.ModelPromoted)
        if event.payload.alias in WATCHED_ALIASES:
            repository.schedule(event.payload.model_name)
        if on_alias_moved is not None:
            on_alias_moved(event.payload.model_name, event.payload.alias)

    return {MODELS_PROMOTED: on_model_promoted}
