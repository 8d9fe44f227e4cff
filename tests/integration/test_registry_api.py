"""The registry's gRPC API against the embedded broker and database."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flywheel.common import rpc
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from tests.integration.registry_client import ref, register

pytestmark = pytest.mark.integration


async def test_register_get_and_download_round_trip(registry, unique: str) -> None:
    data = os.urandom(300_000)
    lineage = common_pb2.Lineage(training_run_id="run-1", dataset_snapshot_id="snap-1", feature_names=["a", "b"])
    mv = await register(registry, f"fraud-{unique}", data, semver="1.0.0", framework="pytorch",
                        metrics={"roc_auc": 0.91}, tags={"team": "risk"}, lineage=lineage, filename="model.pt")
    assert mv.version == 1
    assert mv.artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert mv.artifact.size_bytes == len(data)

    got = (await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(f"fraud-{unique}", 1)))).model_version
    assert got.lineage.training_run_id == "run-1"
    assert list(got.lineage.feature_names) == ["a", "b"]
    assert got.metrics["roc_auc"] == pytest.approx(0.91)
    assert got.tags["team"] == "risk"

    stream = registry.DownloadArtifact(pb.DownloadArtifactRequest(ref=ref(f"fraud-{unique}", 1)))
    messages = [m async for m in stream]
    assert messages[0].model_version.version == 1
    assert b"".join(m.chunk for m in messages[1:]) == data


async def test_versions_increase_and_list_pages_and_filters(registry, unique: str) -> None:
    name = f"pager-{unique}"
    for i in range(5):
        await register(registry, name, f"v{i}".encode(), tags={"parity": "even" if i % 2 == 0 else "odd"})
    first = await registry.ListModelVersions(pb.ListModelVersionsRequest(model_name=name, page_size=2))
    assert [v.version for v in first.model_versions] == [5, 4]
    second = await registry.ListModelVersions(
        pb.ListModelVersionsRequest(model_name=name, page_size=2, page_token=first.next_page_token))
    third = await registry.ListModelVersions(
        pb.ListModelVersionsRequest(model_name=name, page_size=2, page_token=second.next_page_token))
    assert [v.version for v in second.model_versions] == [3, 2]
    assert [v.version for v in third.model_versions] == [1]
    assert third.next_page_token == ""
    even = await registry.ListModelVersions(pb.ListModelVersionsRequest(model_name=name, tags={"parity": "even"}))
    assert [v.version for v in even.model_versions] == [5, 3, 1]


async def test_register_by_uri_only_from_allowed_locations(registry, registry_app, unique: str) -> None:
    imports = registry_app.settings.home / "imports"
    imports.mkdir(parents=True, exist_ok=True)
    (imports / f"{unique}.bin").write_bytes(b"imported weights")
    mv = await register(registry, f"import-{unique}", b"", artifact_uri=(imports / f"{unique}.bin").as_uri())
    assert mv.artifact.sha256 == hashlib.sha256(b"imported weights").hexdigest()
    for outside in ("file:///etc/hostname", (imports / ".." / "stack.json").as_uri(), "http://example.com/x"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(registry, f"import-{unique}", b"", artifact_uri=outside)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not under an allowed import location" in err.value.details()


async def test_same_content_is_stored_once(registry, unique: str) -> None:
    a = await register(registry, f"dedup-{unique}", b"same bytes")
    b = await register(registry, f"dedup-{unique}", b"same bytes")
    assert (a.version, b.version) == (1, 2)
    assert a.artifact.uri == b.artifact.uri


async def test_aliases_set_resolve_delete_and_rollback(registry, unique: str) -> None:
    name = f"alias-{unique}"
    for i in range(3):
        await register(registry, name, f"w{i}".encode())
    moved = await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    assert moved.previous_version == 0
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=2))
    previous = await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="previous")))
    assert previous.model_version.version == 1  # kept for rollback
    champion = await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="champion")))
    assert champion.model_version.version == 2
    assert "champion" in champion.model_version.aliases

    rolled = await registry.RollbackChampion(pb.RollbackChampionRequest(model_name=name))
    assert rolled.champion.version == 1 and rolled.previous_version == 2
    models = await registry.ListModels(pb.ListModelsRequest(page_size=1000))
    aliases = next(m for m in models.models if m.name == name).aliases
    assert dict(aliases) == {"champion": 1, "previous": 2}

    deleted = await registry.DeleteAlias(pb.DeleteAliasRequest(model_name=name, alias="previous"))
    assert deleted.previous_version == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.GetModelVersion(pb.GetModelVersionRequest(ref=ref(name, alias="previous")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_models_list_in_pages_by_name(registry, unique: str) -> None:
    names = [f"page-{unique}-{i}" for i in range(3)]
    for name in names:
        await register(registry, name, name.encode())
    await registry.SetAlias(pb.SetAliasRequest(model_name=names[1], alias="champion", version=1))
    seen: list[pb.Model] = []
    token = ""
    while True:
        page = await registry.ListModels(pb.ListModelsRequest(page_size=2, page_token=token))
        assert len(page.models) <= 2
        seen += page.models
        token = page.next_page_token
        if not token:
            break
    assert [m.name for m in seen] == sorted(m.name for m in seen)
    ours = {m.name: m for m in seen if m.name in names}
    assert sorted(ours) == names
    assert dict(ours[names[1]].aliases) == {"champion": 1} and dict(ours[names[0]].aliases) == {}
    assert ours[names[0]].latest_version == 1 and ours[names[0]].promotion_mode == pb.PROMOTION_MODE_MANUAL


async def test_concurrent_alias_moves_leave_exactly_one_champion(registry, registry_app, unique: str) -> None:
    name = f"race-{unique}"
    for i in range(8):
        await register(registry, name, f"r{i}".encode())
    moves = [pb.SetAliasRequest(model_name=name, alias="champion", version=v) for v in range(1, 9) for _ in range(3)]
    await asyncio.gather(*[registry.SetAlias(move) for move in moves])
    async with registry_app.db.connection() as conn:
        rows = await (await conn.execute("SELECT version FROM aliases WHERE model_name = %s AND alias = 'champion'",
                                         (name,))).fetchall()
        history = await (await conn.execute(
            "SELECT previous_version, version FROM alias_history WHERE model_name = %s AND alias = 'champion'"
            " ORDER BY id",
            (name,))).fetchall()
    assert len(rows) == 1
    # Each move starts where the previous one ended: the history is one unbroken chain.
    for before, after in itertools.pairwise(history):
        assert after["previous_version"] == before["version"]
    assert history[-1]["version"] == rows[0]["version"]


async def test_metrics_lineage_and_policy(registry, unique: str) -> None:
    name = f"meta-{unique}"
    await register(registry, name, b"p")
    await register(registry, name, b"c", lineage=common_pb2.Lineage(parent_version=1))
    mv = (await registry.RecordMetrics(pb.RecordMetricsRequest(ref=ref(name, 2), metrics={"f1": 0.5}))).model_version
    assert mv.metrics["f1"] == pytest.approx(0.5)
    mv = (await registry.RecordLineage(pb.RecordLineageRequest(
        ref=ref(name, 2), lineage=common_pb2.Lineage(eval_report_refs=["eval-1"], drift_event_id="d-1")))).model_version
    mv = (await registry.RecordLineage(pb.RecordLineageRequest(
        ref=ref(name, 2), lineage=common_pb2.Lineage(eval_report_refs=["eval-2", "eval-1"])))).model_version
    assert list(mv.lineage.eval_report_refs) == ["eval-1", "eval-2"]
    assert mv.lineage.parent_version == 1 and mv.lineage.drift_event_id == "d-1"
    policy = await registry.GetPromotionPolicy(pb.GetPromotionPolicyRequest(model_name=name))
    assert policy.mode == pb.PROMOTION_MODE_MANUAL
    await registry.SetPromotionPolicy(pb.SetPromotionPolicyRequest(model_name=name, mode=pb.PROMOTION_MODE_AUTOMATIC))
    policy = await registry.GetPromotionPolicy(pb.GetPromotionPolicyRequest(model_name=name))
    assert policy.mode == pb.PROMOTION_MODE_AUTOMATIC


@pytest.mark.parametrize(("call", "code", "fragment"), [
    (lambda s: s.GetModelVersion(pb.GetModelVersionRequest(ref=ref("no-such-model", 1))),
     grpc.StatusCode.NOT_FOUND, "no-such-model"),
    (lambda s: s.GetModelVersion(pb.GetModelVersionRequest(ref=ref("", 1))), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (lambda s: s.GetModelVersion(pb.GetModelVersionRequest(ref=pb.ModelVersionRef(model_name="m"))),
     grpc.StatusCode.INVALID_ARGUMENT, "neither a version nor an alias"),
    (lambda s: s.GetModelVersion(pb.GetModelVersionRequest(ref=pb.ModelVersionRef(model_name="m", version=-3))),
     grpc.StatusCode.INVALID_ARGUMENT, "positive"),
    (lambda s: s.SetAlias(pb.SetAliasRequest(model_name="m", alias="Bad Alias!", version=1)),
     grpc.StatusCode.INVALID_ARGUMENT, "alias"),
    (lambda s: register(s, "ok-name", b"x", semver="1.2"), grpc.StatusCode.INVALID_ARGUMENT, "semver"),
    (lambda s: register(s, "bad name/with slash", b"x"), grpc.StatusCode.INVALID_ARGUMENT, "model name"),
    (lambda s: register(s, "sha-mismatch", b"x", expected_sha256="0" * 64),
     grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
    (lambda s: register(s, "sha-malformed", b"x", expected_sha256="abc"), grpc.StatusCode.INVALID_ARGUMENT, "hex"),
    (lambda s: register(s, "too-big", b"x" * (9 * 1024 * 1024), chunk=1024 * 1024),
     grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    (lambda s: register(s, "no-kind", b"x", kind=common_pb2.MODEL_KIND_UNSPECIFIED),
     grpc.StatusCode.INVALID_ARGUMENT, "kind"),
    (lambda s: s.ListModelVersions(pb.ListModelVersionsRequest(model_name="no-such-model")),
     grpc.StatusCode.NOT_FOUND, "not registered"),
    (lambda s: s.RollbackChampion(pb.RollbackChampionRequest(model_name="no-such-model")),
     grpc.StatusCode.NOT_FOUND, "not registered"),
])
async def test_bad_input_gets_a_clear_status(registry, call, code, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(registry)
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()


async def test_unknown_version_and_parent_are_rejected(registry, unique: str) -> None:
    name = f"nf-{unique}"
    await register(registry, name, b"1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=7))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "version 7" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(registry, name, b"2", lineage=common_pb2.Lineage(parent_version=9))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parent_version 9" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(registry, name, b"3", semver="2.0.0")
        await register(registry, name, b"4", semver="2.0.0")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model_name=name))
    assert [v.version for v in listed.model_versions] == [2, 1]  # failed registrations left nothing behind


async def test_health_and_reflection(registry_app) -> None:
    async with rpc.channel(registry_app.address) as channel:
        status = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="flywheel.registry.v1.RegistryService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"flywheel.registry.v1.RegistryService", "grpc.health.v1.Health"} <= names
