"""Authentication and roles: principals, bearer parsing, the token cache, and the gRPC guard
around a real RegistryService servicer (a fake token store stands in for the database; the
integration tests in tests/integration/test_auth.py use the real one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from flywheel.common import auth, rpc
from flywheel.common.auth import ANONYMOUS, Authenticator, AuthError, Principal, Role
from flywheel.common.errors import InvalidArgument
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


class FakeStore:
    """token -> principal; counts lookups so the cache can be observed."""

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self.tokens = tokens
        self.lookups = 0

    async def lookup(self, token: str) -> Principal | None:
        self.lookups += 1
        return self.tokens.get(token)


ALICE = Principal("alice", frozenset({Role.OPERATOR}))
READER = Principal("rita", frozenset({Role.READER}))
ROOT = Principal("root", frozenset({Role.ADMIN}))


def test_roles_parse_and_admin_may_do_anything() -> None:
    assert auth.roles("Operator", " reader") == {Role.OPERATOR, Role.READER}
    with pytest.raises(InvalidArgument, match=r"unknown role .god..*admin, operator"):
        auth.roles("god")
    assert ALICE.may(auth.OPERATE) and not ALICE.may(auth.SERVICE)
    assert ROOT.may(auth.SERVICE) and ROOT.may(auth.PREDICT)
    assert READER.may(auth.READ) and not READER.may(auth.OPERATE)


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None),
])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert auth.bearer(header) == token


async def test_authorize_says_what_is_missing() -> None:
    authenticator = Authenticator(FakeStore({"t-alice": ALICE, "t-rita": READER}))  # type: ignore[arg-type]
    assert await authenticator.authorize("Bearer t-alice", auth.OPERATE, "promote") is ALICE
    with pytest.raises(AuthError) as missing:
        await authenticator.authorize(None, auth.READ, "list")
    assert missing.value.status == 401 and "authorization: Bearer" in str(missing.value)
    with pytest.raises(AuthError) as unknown:
        await authenticator.authorize("Bearer nope", auth.READ, "list")
    assert unknown.value.status == 401 and "unknown, expired or revoked" in str(unknown.value)
    with pytest.raises(AuthError) as denied:
        await authenticator.authorize("Bearer t-rita", auth.OPERATE, "promote")
    assert denied.value.status == 403
    assert str(denied.value) == "rita (roles: reader) may not promote: it needs role admin or operator"


async def test_anonymous_calls_get_only_the_anonymous_principal() -> None:
    authenticator = Authenticator(FakeStore({}), anonymous=ANONYMOUS)  # type: ignore[arg-type]
    assert await authenticator.authorize(None, auth.PREDICT, "infer") is ANONYMOUS
    with pytest.raises(AuthError) as info:
        await authenticator.authorize(None, auth.READ, "list")
    assert info.value.status == 401  # anonymous callers are told to authenticate, not that they are forbidden


async def test_tokens_are_cached_and_a_revocation_shows_after_the_cache_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore({"t-alice": ALICE})
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    authenticator = Authenticator(store, cache_seconds=10, negative_cache_seconds=2)  # type: ignore[arg-type]
    for _ in range(5):
        await authenticator.principal("Bearer t-alice")
    assert store.lookups == 1
    del store.tokens["t-alice"]  # revoked
    clock[0] += 5
    assert await authenticator.principal("Bearer t-alice") is ALICE  # still cached
    clock[0] += 6
    with pytest.raises(AuthError):
        await authenticator.principal("Bearer t-alice")
    assert store.lookups == 2


def test_every_rpc_must_declare_its_roles() -> None:
    guard = rpc.AuthInterceptor(Authenticator(FakeStore({})))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no roles declared for .*SetAlias"):
        guard.declare(SERVICE, {"GetModelVersion": auth.READ})
    with pytest.raises(ValueError, match="no such RPCs Bogus"):
        guard.declare(SERVICE, {**{m.name: auth.READ for m in pb.DESCRIPTOR.services_by_name[
            "RegistryService"].methods}, "Bogus": auth.READ})


class Registry(pb_grpc.RegistryServiceServicer):
    """Answers with the caller's principal, as a use case reads it."""

    async def SetAlias(self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext) -> pb.SetAliasResponse:
        principal = auth.current_principal()
        assert principal is not None
        return pb.SetAliasResponse(model_version=pb.ModelVersion(model_name=principal.name))

    async def DownloadArtifact(self, request: pb.DownloadArtifactRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DownloadArtifactResponse]:
        for _ in range(2):
            yield pb.DownloadArtifactResponse(chunk=auth.principal_name().encode())


@pytest.fixture(scope="module")
async def guarded() -> AsyncIterator[str]:
    authenticator = Authenticator(FakeStore({"t-alice": ALICE, "t-rita": READER}))  # type: ignore[arg-type]
    server = rpc.RpcServer("127.0.0.1", 0, auth=authenticator)
    roles = {m.name: auth.READ for m in pb.DESCRIPTOR.services_by_name["RegistryService"].methods}
    server.add(pb_grpc.add_RegistryServiceServicer_to_server, Registry(), SERVICE, {**roles, "SetAlias": auth.OPERATE})
    port = await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(grace=0)


async def call_set_alias(address: str, token: str = "") -> pb.SetAliasResponse:
    async with rpc.channel(address, auth=rpc.ClientAuth(token=token)) as channel:
        return await pb_grpc.RegistryServiceStub(channel).SetAlias(pb.SetAliasRequest(model_name="m"))


async def test_the_guard_answers_401_403_and_binds_the_principal(guarded: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call_set_alias(guarded)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await call_set_alias(guarded, "t-rita")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "rita (roles: reader) may not call SetAlias" in (denied.value.details() or "")
    assert (await call_set_alias(guarded, "t-alice")).model_version.model_name == "alice"


async def test_streaming_handlers_are_guarded_too(guarded: str) -> None:
    async with rpc.channel(guarded, auth=rpc.ClientAuth(token="t-rita")) as channel:
        chunks = [m.chunk async for m in pb_grpc.RegistryServiceStub(channel).DownloadArtifact(
            pb.DownloadArtifactRequest())]
    assert chunks == [b"rita", b"rita"]
    async with rpc.channel(guarded) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [m async for m in pb_grpc.RegistryServiceStub(channel).DownloadArtifact(pb.DownloadArtifactRequest())]
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open(guarded: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with rpc.channel(guarded) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_explicit_authorization_header_is_not_overridden(guarded: str) -> None:
    async with rpc.channel(guarded, auth=rpc.ClientAuth(token="t-rita")) as channel:
        answer = await pb_grpc.RegistryServiceStub(channel).SetAlias(
            pb.SetAliasRequest(model_name="m"), metadata=(("authorization", "Bearer t-alice"),))
    assert answer.model_version.model_name == "alice"
