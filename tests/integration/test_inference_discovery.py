"""Inference without a configured model list serves every predictive model that has a champion: the
ones promoted before it started and the ones promoted later, never another kind. A registry of its
own, so the session registry's many test models stay out of it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flywheel.common import rpc
from flywheel.common.topics import MODELS_PROMOTED
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.inference.testing import build_predictive_artifact
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from flywheel.registry.main import RegistryApp
from tests import polling
from tests.fixtures_plugin import registry_settings
from tests.integration import registry_client
from tests.kafka_helpers import consumed_through, end_offsets
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def own_registry(infra) -> AsyncIterator[tuple[RegistryApp, Any]]:  # type: ignore[no-untyped-def]
    app = RegistryApp(registry_settings(infra))
    await app.start()
    try:
        async with rpc.channel(app.address, auth=infra.tokens.auth()) as channel:
            yield app, rpb_grpc.RegistryServiceStub(channel)
    finally:
        await app.stop()


async def champion(stub: Any, name: str, kind: int = common_pb2.MODEL_KIND_PREDICTIVE) -> int:
    data = build_predictive_artifact(n_numeric=2, hidden=(4,), name=name) if kind == common_pb2.MODEL_KIND_PREDICTIVE \
        else b"not a predictive artifact"
    version = (await registry_client.register(stub, name, data, kind=kind)).version
    await stub.SetAlias(rpb.SetAliasRequest(model_name=name, alias="champion", version=version))
    return version


async def test_every_promoted_predictive_model_is_served(infra, own_registry) -> None:  # type: ignore[no-untyped-def]
    registry_app, stub = own_registry
    u = uuid.uuid4().hex[:8]
    before, after, llm = f"before-{u}", f"after-{u}", f"llm-{u}"
    await champion(stub, before)
    app = InferenceApp(InferenceSettings(
        **shared_settings(infra), http_port=0, registry_addr=registry_app.address, db_schema=f"inference_{u}",
        consumer_group=f"inference-{u}"))
    assert app.settings.models == []  # the default: no list, serve what the registry promotes
    await app.start()
    try:
        dp = app.dataplane
        assert dp.model_ready(before)  # found at start
        await champion(stub, llm, kind=common_pb2.MODEL_KIND_LLM)
        await champion(stub, after)
        await polling.eventually(lambda: _ready(dp, after), what=f"{after} served after its promotion")
        # Every promotion so far handled (the LLM's included: another key, maybe another partition), and every
        # reconcile it caused finished: then the LLM is not served, nor listed; nor is any model of the
        # session's other tests, whose promotions are on the same topic but whose names this registry lacks.
        ends = await end_offsets(infra.kafka_bootstrap, MODELS_PROMOTED.name)
        await consumed_through(infra.kafka_bootstrap, app.settings.consumer_group, MODELS_PROMOTED.name, ends)
        await app.repository.wait_idle()
        assert llm not in dp.slots
        assert {e.name for e in dp.repository_index()} == {before, after}
    finally:
        await app.stop()


async def _ready(dp: Any, name: str) -> bool:
    return name in dp.slots and dp.model_ready(name)
