"""Nothing is lost while the broker is down: the outbox holds events until it is back."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from flywheel.common import rpc
from flywheel.common.topics import MODELS_REGISTERED
from flywheel.proto.events.v1 import models_pb2
from tests.integration.registry_client import register
from tests.kafka_helpers import header, read_records
from tests.polling import eventually

pytestmark = pytest.mark.integration


async def unsent(app) -> int:  # type: ignore[no-untyped-def]
    async with app.db.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")).fetchone()
    return row["n"]


def publish_failures(app) -> float:  # type: ignore[no-untyped-def]
    return REGISTRY.get_sample_value("flywheel_outbox_publish_failures_total", {"schema": app.db.schema}) or 0.0


async def failures_above(app, before: float) -> bool:  # type: ignore[no-untyped-def]
    return publish_failures(app) > before


async def status(app) -> int:  # type: ignore[no-untyped-def]
    async with rpc.channel(app.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return response.status


async def test_event_registered_during_outage_arrives_exactly_once(infra, registry, registry_app, unique) -> None:  # type: ignore[no-untyped-def]
    name = f"outage-{unique}"
    failures_before = publish_failures(registry_app)
    infra.stop_broker()
    try:
        mv = await register(registry, name, b"registered while the broker is down")
        assert mv.version == 1  # the registry keeps serving: the event waits in the outbox
        assert await unsent(registry_app) >= 1
        # A relay retrying through a broker outage is not down: the registry stays SERVING.
        await eventually(lambda: failures_above(registry_app, failures_before), timeout=30,
                         what="the relay failing to publish")
        assert await status(registry_app) == health_pb2.HealthCheckResponse.SERVING
        assert registry_app.relay.healthy and registry_app.relay.restarts == 0
    finally:
        infra.start_broker()  # same port; the embedded broker comes back empty

    def mine(rs):  # type: ignore[no-untyped-def]
        return [r for r in rs if models_pb2.ModelRegistered.FromString(r.value).model.name == name]
    records = await read_records(infra.kafka_bootstrap, MODELS_REGISTERED.name, until=lambda rs: bool(mine(rs)),
                                 timeout=60, settle=3.0)
    assert len(mine(records)) == 1
    assert len({header(r, "ce_id") for r in mine(records)}) == 1
    assert await unsent(registry_app) == 0
