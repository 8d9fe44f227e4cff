"""The typed clients (flywheel.common.clients) against in-process fakes of the registry and the feature
store: gRPC statuses become domain errors, transfers are chunked and sha256-checked, echoed rows are
checked. The real services are exercised by the integration tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from flywheel.common import errors, rpc
from flywheel.common.clients import featurestore
from flywheel.common.clients.featurestore import FeatureStoreClient, feature_value, python_value
from flywheel.common.clients.registry import CHUNK, RegistryClient
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as fs_grpc
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as reg_grpc


class _Error(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(("code", "error", "text"), [
    (grpc.StatusCode.NOT_FOUND, errors.NotFound, "registry: no model 'x'"),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable, "registry at host:1 did not answer (UNAVAILABLE): no model"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Unavailable, "did not answer (DEADLINE_EXCEEDED)"),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument, "registry refused the request: no model"),
    (grpc.StatusCode.INTERNAL, errors.FailedPrecondition, "registry failed (INTERNAL): no model"),
])
def test_statuses_become_domain_errors_naming_the_service(code: grpc.StatusCode, error: type, text: str) -> None:
    found = rpc.domain_error("registry", "host:1", _Error(code, "no model 'x'"))
    assert type(found) is error and text in str(found)


class FakeRegistry(reg_grpc.RegistryServiceServicer):
    def __init__(self) -> None:
        self.versions: dict[int, tuple[reg.ModelVersion, bytes]] = {}
        self.chunk_sizes: list[int] = []
        self.corrupt = False
        self.lineage: list[common_pb2.Lineage] = []

    async def RegisterModelVersion(self, requests: AsyncIterator[reg.RegisterModelVersionRequest],
                                   context: grpc.aio.ServicerContext) -> reg.RegisterModelVersionResponse:
        spec, data = None, b""
        async for request in requests:
            if request.HasField("spec"):
                spec = request.spec
            else:
                self.chunk_sizes.append(len(request.chunk))
                data += request.chunk
        assert spec is not None
        digest = hashlib.sha256(data).hexdigest()
        if spec.expected_sha256 and spec.expected_sha256 != digest:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch")
        version = len(self.versions) + 1
        mv = reg.ModelVersion(model_name=spec.model_name, version=version, tags=spec.tags)
        mv.artifact.sha256, mv.artifact.size_bytes = digest, len(data)
        self.versions[version] = (mv, data)
        return reg.RegisterModelVersionResponse(model_version=mv)

    def _get(self, ref: reg.ModelVersionRef) -> tuple[reg.ModelVersion, bytes] | None:
        version = max(self.versions, default=0) if ref.alias == "champion" else ref.version
        return self.versions.get(version)

    async def GetModelVersion(self, request: reg.GetModelVersionRequest,
                              context: grpc.aio.ServicerContext) -> reg.GetModelVersionResponse:
        found = self._get(request.ref)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.ref}")
        return reg.GetModelVersionResponse(model_version=found[0])

    async def ListModelVersions(self, request: reg.ListModelVersionsRequest,
                                context: grpc.aio.ServicerContext) -> reg.ListModelVersionsResponse:
        if request.model_name != "fraud":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        matching = [mv for mv, _ in self.versions.values() if all(mv.tags.get(k) == v for k, v in request.tags.items())]
        return reg.ListModelVersionsResponse(model_versions=matching[::-1][:request.page_size or 50])

    async def DownloadArtifact(self, request: reg.DownloadArtifactRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[reg.DownloadArtifactResponse]:
        found = self._get(request.ref)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")
        mv, data = found
        yield reg.DownloadArtifactResponse(model_version=mv)
        for start in range(0, len(data), 1000):
            chunk = data[start:start + 1000]
            yield reg.DownloadArtifactResponse(chunk=chunk[::-1] if self.corrupt else chunk)

    async def RecordLineage(self, request: reg.RecordLineageRequest,
                            context: grpc.aio.ServicerContext) -> reg.RecordLineageResponse:
        self.lineage.append(request.lineage)
        return reg.RecordLineageResponse(model_version=self.versions[request.ref.version][0])


@pytest.fixture
async def registry() -> AsyncIterator[tuple[FakeRegistry, RegistryClient]]:
    fake = FakeRegistry()
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(reg_grpc.add_RegistryServiceServicer_to_server, fake, "flywheel.registry.v1.RegistryService")
    port = await server.start()
    try:
        yield fake, RegistryClient(f"127.0.0.1:{port}", timeout=5)
    finally:
        await server.stop(grace=0)


async def test_registry_client_versions_transfers_and_lineage(registry: tuple[FakeRegistry, RegistryClient],
                                                              tmp_path: Path) -> None:
    fake, client = registry
    assert await client.get_version("fraud", 1) is None and await client.version_of("fraud", "champion") == 0
    assert await client.find_by_tag("unknown", "run_id", "r") is None

    data = bytes(range(256)) * (CHUNK // 128)  # two chunks
    sent: list[int] = []
    mv = await client.register(reg.ModelVersionSpec(model_name="fraud", tags={"run_id": "r-1"}), data,
                               on_progress=sent.append)
    assert mv.version == 1 and mv.artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert fake.chunk_sizes == sent == [CHUNK, CHUNK]
    path = tmp_path / "model.bin"
    path.write_bytes(b"file bytes")
    assert (await client.register(reg.ModelVersionSpec(model_name="fraud"), path)).version == 2

    async def chunks() -> AsyncIterator[bytes]:
        yield b"stream"
        yield b"ed"
    assert (await client.register(reg.ModelVersionSpec(model_name="fraud"), chunks())).artifact.size_bytes == 8
    with pytest.raises(errors.InvalidArgument, match="registry refused the request: sha256 mismatch"):
        await client.register(reg.ModelVersionSpec(model_name="fraud", expected_sha256="0" * 64), b"x")

    assert await client.version_of("fraud", "champion") == 3
    assert (await client.find_by_tag("fraud", "run_id", "r-1")).version == 1  # type: ignore[union-attr]
    versions, token = await client.list_versions("fraud", page_size=2)
    assert [v.version for v in versions] == [3, 2] and token == ""
    assert await client.download("fraud", 1) == data
    assert await client.download("fraud", alias="champion") == b"streamed"
    async with client.open_download("fraud", 2) as download:
        assert download.version.version == 2 and [c async for c in download.chunks()] == [b"file bytes"]
    with pytest.raises(errors.NotFound, match="registry: no such version"):
        await client.download("fraud", 9)
    fake.corrupt = True
    with pytest.raises(errors.Unavailable, match="is corrupt"):
        await client.download("fraud", 1)

    await client.record_lineage("fraud", 1, common_pb2.Lineage(eval_report_refs=["evaluator://e/1"]))
    assert list(fake.lineage[0].eval_report_refs) == ["evaluator://e/1"]


async def test_an_unreachable_registry_is_unavailable() -> None:
    async with RegistryClient("127.0.0.1:1", timeout=2) as client:
        with pytest.raises(errors.Unavailable, match=r"registry at 127\.0\.0\.1:1 did not answer"):
            await client.get_version("fraud", 1)


class FakeFeatureStore(fs_grpc.FeatureStoreServiceServicer):
    """Values = the row's position; `swap` answers the first two rows of a call in the wrong order."""

    def __init__(self) -> None:
        self.swap = False
        self.online_calls: list[int] = []

    async def GetHistoricalFeatures(self, request: fs.GetHistoricalFeaturesRequest, context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[fs.GetHistoricalFeaturesResponse]:
        rows = list(request.entity_rows)
        if self.swap:
            rows[0], rows[1] = rows[1], rows[0]
        for start in range(0, len(rows), request.page_size):
            page = fs.GetHistoricalFeaturesResponse(feature_names=["v__x", "v__y"] if start == 0 else [])
            for row in rows[start:start + request.page_size]:
                page.entity_rows.add().CopyFrom(row)
                page.rows.add(values=[feature_value(row.keys["id"].int64_value * 1.5), feature_value("a")],
                              statuses=[fs.FEATURE_STATUS_PRESENT, fs.FEATURE_STATUS_NOT_FOUND])
            yield page

    async def GetOnlineFeatures(self, request: fs.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext) -> fs.GetOnlineFeaturesResponse:
        if request.features.feature_service != "fraud_v1":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no feature service")
        self.online_calls.append(len(request.entity_rows))
        response = fs.GetOnlineFeaturesResponse(feature_names=["v__x"])
        for row in request.entity_rows:
            response.rows.add(values=[row.keys["id"]], statuses=[fs.FEATURE_STATUS_PRESENT])
        return response


async def test_feature_store_client_checks_what_it_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFeatureStore()
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(fs_grpc.add_FeatureStoreServiceServicer_to_server, fake, "flywheel.featurestore.v1.FeatureStoreService")
    port = await server.start()
    try:
        client = FeatureStoreClient(f"127.0.0.1:{port}", timeout=5, page_size=2, request_rows=3)
        keys = [{"id": i} for i in range(5)]
        times = [datetime(2026, 1, 1, tzinfo=UTC)] * 5
        seen: list[int] = []

        async def progress(rows: int) -> None:
            seen.append(rows)
        got = await client.historical("fraud_v1", keys, times, progress)
        assert got.names == ["v__x", "v__y"] and got.rows == [[i * 1.5, None] for i in range(5)]
        assert seen == [2, 3, 5]  # pages of 2 within calls of 3 rows
        fake.swap = True
        with pytest.raises(errors.FailedPrecondition, match="answered row 0 out of order"):
            await client.historical("fraud_v1", keys, times)

        monkeypatch.setattr(featurestore, "MAX_ONLINE_ROWS", 2)
        async with FeatureStoreClient(f"127.0.0.1:{port}", timeout=5, keep_channel=True) as online:
            found = await online.online("fraud_v1", [{"id": feature_value(i)} for i in range(5)])
            assert found.names == ["v__x"] and [python_value(r.values[0]) for r in found.rows] == [0, 1, 2, 3, 4]
            assert fake.online_calls == [2, 2, 1]
            with pytest.raises(errors.NotFound, match="feature store: no feature service"):
                await online.online("other", [{"id": feature_value(1)}])
    finally:
        await server.stop(grace=0)
