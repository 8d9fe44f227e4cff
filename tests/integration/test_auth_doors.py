"""Authentication and roles on every door, against the real token store (the session's PostgreSQL):
every service answers UNAUTHENTICATED without a token, PERMISSION_DENIED with a token that lacks the
RPC's role, and works with the right one; tokens expire and are revoked; `make run`'s provisioning
reuses valid tokens; gRPC runs over mutual TLS with certificates made in the test."""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from flywheel.common import rpc
from flywheel.common.auth import Role, TokenStore
from flywheel.common.db import Database
from flywheel.common.errors import AlreadyExists, InvalidArgument
from flywheel.common.launcher import DEMO_ROLES, SERVICE_ROLES, provision_tokens
from flywheel.evaluator.config import EvaluatorSettings
from flywheel.evaluator.main import EvaluatorApp
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.finetuner.config import FinetunerSettings
from flywheel.finetuner.main import FinetunerApp
from flywheel.inference.config import InferenceSettings
from flywheel.inference.main import InferenceApp
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.main import MonitorApp
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as epb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as epb_grpc
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fpb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fpb_grpc
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as ftpb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as ftpb_grpc
from flywheel.proto.inference import grpc_service_pb2 as ipb
from flywheel.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from flywheel.proto.monitor.v1 import monitor_service_pb2 as mpb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as mpb_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as tpb_grpc
from flywheel.registry.main import RegistryApp
from flywheel.trainer.config import TrainerSettings
from flywheel.trainer.main import TrainerApp
from tests.fixtures_plugin import registry_settings
from tests.service_helpers import shared_settings
from tests.tls_helpers import make_pki

pytestmark = pytest.mark.integration

FEAST_REPO = Path(__file__).resolve().parents[1] / "fixtures" / "feast_repo"
AUTH_FAILURES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.fixture
async def store(infra) -> AsyncIterator[TokenStore]:  # type: ignore[no-untyped-def]
    store = TokenStore(Database(infra.database_url, "auth", min_size=1, max_size=1))
    await store.db.pool.open(wait=True, timeout=30)
    await store.migrate()
    yield store
    await store.db.close()


async def test_tokens_are_stored_hashed_expire_and_are_revoked(store: TokenStore, unique: str) -> None:
    token, info = await store.create(f"ci-{unique}", ["reader", "predict"], description="a test")
    assert token.startswith("fwt_") and len(token) > 40
    principal = await store.lookup(token)
    assert principal is not None and principal.name == f"ci-{unique}"
    assert principal.roles == {Role.READER, Role.PREDICT} and principal.token_id == info.id
    async with store.db.connection() as conn:
        rows = await (await conn.execute("SELECT * FROM auth.tokens WHERE id = %s", (info.id,))).fetchall()
    assert token not in str(rows)  # only the hash is kept

    expired, _ = await store.create(f"old-{unique}", ["reader"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert await store.lookup(expired) is None
    assert (await store.revoke(info.id)).revoked_at is not None
    assert await store.lookup(token) is None
    assert info.id in {i.id for i in await store.list(include_revoked=True)}
    assert info.id not in {i.id for i in await store.list()}

    given = f"a-secret-from-a-kubernetes-secret-{unique}"
    await store.create(f"k8s-{unique}", ["service"], token=given)
    with pytest.raises(AlreadyExists):
        await store.create(f"k8s-{unique}", ["service"], token=given)
    with pytest.raises(InvalidArgument, match="at least 24"):
        await store.create("short", ["service"], token="short")
    with pytest.raises(InvalidArgument, match="unknown role"):
        await store.create("x", ["root"])


async def test_make_run_provisions_tokens_once_and_replaces_revoked_ones(infra, store: TokenStore,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    principals = {"registry": SERVICE_ROLES, "demo-payments": DEMO_ROLES}
    first = await provision_tokens(tmp_path, infra.database_url, principals)
    admin_file = tmp_path / "admin.token"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tokens" / "registry.token").stat().st_mode) == 0o600
    assert admin_file.read_text().strip() == first["admin"]
    admin = await store.lookup(first["admin"])
    assert admin is not None and admin.roles == {Role.ADMIN}
    demo = await store.lookup(first["demo-payments"])
    assert demo is not None and demo.roles == {Role.SERVICE, Role.OPERATOR, Role.PREDICT}

    assert await provision_tokens(tmp_path, infra.database_url, principals) == first  # reused on the next start
    registry_token = await store.lookup(first["registry"])
    assert registry_token is not None
    await store.revoke(registry_token.token_id)
    again = await provision_tokens(tmp_path, infra.database_url, principals)
    assert again["registry"] != first["registry"] and again["admin"] == first["admin"]
    assert await store.lookup(again["registry"]) is not None


# -- every door -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def doors(infra, registry_app) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Every service of the platform in-process (the session's registry included), by name -> address."""
    suffix = uuid.uuid4().hex[:8]
    common = shared_settings(infra)
    apps: list[Any] = []
    try:
        for app in (
            FeatureStoreApp(FeatureStoreSettings(**common, db_schema=f"fs_auth_{suffix}", repo=str(FEAST_REPO),
                                                 consumer_group=f"fs-auth-{suffix}")),
            TrainerApp(TrainerSettings(**common, db_schema=f"trainer_auth_{suffix}",
                                       consumer_group=f"trainer-auth-{suffix}", registry_addr=registry_app.address)),
            EvaluatorApp(EvaluatorSettings(**common, db_schema=f"evaluator_auth_{suffix}",
                                           consumer_group=f"evaluator-auth-{suffix}",
                                           registry_addr=registry_app.address)),
            MonitorApp(MonitorSettings(**common, db_schema=f"monitor_auth_{suffix}",
                                       consumer_group=f"monitor-auth-{suffix}", registry_addr=registry_app.address)),
            FinetunerApp(FinetunerSettings(**common, db_schema=f"finetuner_auth_{suffix}",
                                           consumer_group=f"finetuner-auth-{suffix}",
                                           registry_addr=registry_app.address)),
            InferenceApp(InferenceSettings(**common, http_port=0, models=["nothing"],
                                           registry_addr=registry_app.address, db_schema=f"inference_auth_{suffix}",
                                           consumer_group=f"inference-auth-{suffix}")),
        ):
            await app.start()
            apps.append(app)
        names = ("featurestore", "trainer", "evaluator", "monitor", "finetuner", "inference")
        yield {"registry": registry_app.address, **{n: a.address for n, a in zip(names, apps, strict=True)},
               "inference-http": f"http://{apps[-1].http_address}"}
    finally:
        for app in reversed(apps):
            await app.stop()


Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


@dataclass(frozen=True)
class Door:
    """One RPC of one service: who may call it and who may not."""

    service: str
    call: Call
    allowed: str  # a role of the session's tokens that may call it
    denied: str  # one that may not


async def _read_stream(stream: Any) -> list[Any]:
    return [item async for item in stream]


DOORS = {
    "registry read": Door("registry", lambda ch: rpb_grpc.RegistryServiceStub(ch).ListModels(
        rpb.ListModelsRequest()), "reader", "predict"),
    "registry promote": Door("registry", lambda ch: rpb_grpc.RegistryServiceStub(ch).SetAlias(
        rpb.SetAliasRequest(model_name="nothing-here", alias="champion", version=1)), "operator", "service"),
    "registry register": Door("registry", lambda ch: rpb_grpc.RegistryServiceStub(ch).RegisterModelVersion(
        iter([rpb.RegisterModelVersionRequest(spec=rpb.ModelVersionSpec(model_name="x"))])), "service", "reader"),
    "featurestore read": Door("featurestore", lambda ch: fpb_grpc.FeatureStoreServiceStub(ch).ListFeatureViews(
        fpb.ListFeatureViewsRequest()), "service", "predict"),
    "featurestore materialize": Door("featurestore", lambda ch: fpb_grpc.FeatureStoreServiceStub(ch).Materialize(
        fpb.MaterializeRequest(feature_views=["no_such_view"])), "operator", "service"),
    "trainer read": Door("trainer", lambda ch: tpb_grpc.TrainerServiceStub(ch).ListRuns(tpb.ListRunsRequest()),
                         "reader", "predict"),
    "trainer start run": Door("trainer", lambda ch: tpb_grpc.TrainerServiceStub(ch).StartRun(
        tpb.StartRunRequest(model_name="no-such-spec")), "operator", "reader"),
    "trainer watch": Door("trainer", lambda ch: _read_stream(tpb_grpc.TrainerServiceStub(ch).WatchRun(
        tpb.WatchRunRequest(run_id="no-such-run"))), "reader", "reviewer"),
    "evaluator read": Door("evaluator", lambda ch: epb_grpc.EvaluatorServiceStub(ch).ListEvaluations(
        epb.ListEvaluationsRequest()), "reader", "predict"),
    "evaluator evaluate": Door("evaluator", lambda ch: epb_grpc.EvaluatorServiceStub(ch).Evaluate(
        epb.EvaluateRequest(model_name="nothing", candidate_version=1)), "operator", "service"),
    "monitor read": Door("monitor", lambda ch: mpb_grpc.MonitorServiceStub(ch).GetModelStatus(
        mpb.GetModelStatusRequest(model_name="nothing")), "reader", "predict"),
    "finetuner read": Door("finetuner", lambda ch: ftpb_grpc.FinetunerServiceStub(ch).ListRuns(
        ftpb.ListRunsRequest()), "reader", "predict"),
    "finetuner dataset": Door("finetuner", lambda ch: ftpb_grpc.FinetunerServiceStub(ch).GetDataset(
        ftpb.GetDatasetRequest(application="no-such-app")), "service", "reviewer"),
    "finetuner start run": Door("finetuner", lambda ch: ftpb_grpc.FinetunerServiceStub(ch).StartRun(
        ftpb.StartRunRequest(application="no-such-app")), "operator", "service"),
    "finetuner watch": Door("finetuner", lambda ch: _read_stream(ftpb_grpc.FinetunerServiceStub(ch).WatchRun(
        ftpb.WatchRunRequest(run_id="no-such-run"))), "reader", "predict"),
    "inference infer": Door("inference", lambda ch: ipb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
        ipb.ModelInferRequest(model_name="nothing")), "predict", "reader"),
    "inference metadata": Door("inference", lambda ch: ipb_grpc.GRPCInferenceServiceStub(ch).ServerMetadata(
        ipb.ServerMetadataRequest()), "reader", "reviewer"),
}


async def outcome(address: str, call: Call, token: str = "") -> grpc.StatusCode:
    async with rpc.channel(address, auth=rpc.ClientAuth(token=token)) as channel:
        try:
            await call(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("door", list(DOORS), ids=list(DOORS))
async def test_every_door_takes_a_token_with_the_right_role(infra, doors: dict[str, str], door: str) -> None:  # type: ignore[no-untyped-def]
    d, address = DOORS[door], doors[DOORS[door].service]
    assert await outcome(address, d.call) == grpc.StatusCode.UNAUTHENTICATED
    assert await outcome(address, d.call, "fwt_not-a-token-anyone-issued") == grpc.StatusCode.UNAUTHENTICATED
    assert await outcome(address, d.call, getattr(infra.tokens, d.denied)) == grpc.StatusCode.PERMISSION_DENIED
    # With the right role the call reaches the service: it works or fails on its own terms (an unknown model...).
    assert await outcome(address, d.call, getattr(infra.tokens, d.allowed)) not in AUTH_FAILURES
    assert await outcome(address, d.call, infra.tokens.admin) not in AUTH_FAILURES


async def test_reads_with_a_reader_token_really_answer(infra, doors: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    async with rpc.channel(doors["featurestore"], auth=infra.tokens.auth("reader")) as channel:
        views = await fpb_grpc.FeatureStoreServiceStub(channel).ListFeatureViews(fpb.ListFeatureViewsRequest())
    assert {v.name for v in views.feature_views} >= {"customer_profile"}
    async with rpc.channel(doors["trainer"], auth=infra.tokens.auth("reader")) as channel:
        runs = await tpb_grpc.TrainerServiceStub(channel).ListRuns(tpb.ListRunsRequest())
    assert list(runs.runs) == []


async def test_probes_stay_open(doors: dict[str, str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for name, address in doors.items():
        if name.endswith("-http"):
            continue
        async with rpc.channel(address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    async with rpc.channel(doors["inference"]) as channel:
        live = await ipb_grpc.GRPCInferenceServiceStub(channel).ServerLive(ipb.ServerLiveRequest())
    assert live.live


async def test_the_rest_door_takes_the_same_tokens(infra, doors: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    base = doors["inference-http"]
    body = {"inputs": [{"name": "numeric", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}

    def bearer(role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {getattr(infra.tokens, role)}"}

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v2/models/nothing/infer", json=body) as answer:
            assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert "authorization: Bearer" in (await answer.json())["error"]
        async with http.post(f"{base}/v2/models/nothing/infer", json=body, headers=bearer("reader")) as answer:
            assert answer.status == 403
            assert "reader (roles: reader) may not call ModelInfer" in (await answer.json())["error"]
        async with http.post(f"{base}/v2/models/unknown/infer", json=body, headers=bearer("predict")) as answer:
            assert answer.status == 404 and "unknown model 'unknown'" in (await answer.json())["error"]
        async with http.get(f"{base}/v2/models/stats", headers=bearer("reader")) as answer:
            assert answer.status == 200
        async with http.get(f"{base}/v2/health/ready") as answer:  # probes stay open
            assert answer.status == 200


async def test_anonymous_predictions_only_when_allowed(infra, registry_app) -> None:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    app = InferenceApp(InferenceSettings(**shared_settings(infra), http_port=0, models=["nothing"],
                                         registry_addr=registry_app.address, db_schema=f"inference_anon_{suffix}",
                                         consumer_group=f"inference-anon-{suffix}", allow_anonymous_predict=True))
    await app.start()
    try:
        infer = DOORS["inference infer"].call
        assert await outcome(app.address, infer) not in AUTH_FAILURES  # stock clients send no token
        assert await outcome(app.address, DOORS["inference metadata"].call) == grpc.StatusCode.OK
        # A token that is sent is still checked: a bad one is not "anonymous", a wrong role is still wrong.
        assert await outcome(app.address, infer, "fwt_not-a-token-anyone-issued") == grpc.StatusCode.UNAUTHENTICATED
        assert await outcome(app.address, infer, infra.tokens.reader) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await app.stop()


# -- mutual TLS ---------------------------------------------------------------------------------------------------


async def test_mutual_tls_round_trip(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    app = RegistryApp(registry_settings(infra, tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
                                        tls_ca_file=str(pki.ca), tls_client_auth=True))
    await app.start()
    list_models = DOORS["registry read"].call
    try:
        trusted = rpc.ClientAuth(token=infra.tokens.reader, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                                 key_file=str(pki.client_key))
        async with rpc.channel(app.address, auth=trusted) as channel:
            answer = await rpc_grpc_list(channel)
        assert answer.models == []
        # No client certificate, one from another CA, or plaintext: the handshake fails before any RPC.
        no_cert = rpc.ClientAuth(token=infra.tokens.reader, ca_file=str(pki.ca))
        stranger = rpc.ClientAuth(token=infra.tokens.reader, ca_file=str(pki.ca), cert_file=str(pki.stranger_cert),
                                  key_file=str(pki.stranger_key))
        for auth in (no_cert, stranger, rpc.ClientAuth(token=infra.tokens.reader)):
            async with rpc.channel(app.address, auth=auth, default_timeout=5) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await list_models(channel)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # TLS does not replace the token: a trusted certificate without one is still UNAUTHENTICATED.
        cert_only = rpc.ClientAuth(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        assert await outcome_with(app.address, list_models, cert_only) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await app.stop()


async def rpc_grpc_list(channel: grpc.aio.Channel) -> rpb.ListModelsResponse:
    return await rpb_grpc.RegistryServiceStub(channel).ListModels(rpb.ListModelsRequest())


async def outcome_with(address: str, call: Call, auth: rpc.ClientAuth) -> grpc.StatusCode:
    async with rpc.channel(address, auth=auth) as channel:
        try:
            await call(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK
