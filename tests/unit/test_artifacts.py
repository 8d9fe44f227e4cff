"""The artifact store port, run against both adapters: local files and a real S3-compatible server (moto)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from flywheel.common.artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_store_from_uri,
)
from flywheel.common.errors import InvalidArgument, NotFound, Unavailable

KiB = 1 << 10
MiB = 1 << 20
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in its own thread, on a free loopback port, for this module."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS credentials and no user AWS config or proxy, for each test only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return S3ArtifactStore(
        f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=request.getfixturevalue("s3_endpoint"),
        spool_dir=tmp_path / "spool",
        **CREDENTIALS,
    )


def raw_s3(store: S3ArtifactStore) -> Any:
    """A plain boto3 client on the store's server, to look behind the store's back."""
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region, **CREDENTIALS)


def stored_files(store: ArtifactStore) -> list[str]:
    """Every file a store holds, temp files included (for S3: objects, plus its spool dir)."""
    if isinstance(store, LocalArtifactStore):
        root = store.root
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    assert isinstance(store, S3ArtifactStore)
    spooled = [str(p) for p in store.spool_dir.rglob("*")] if store.spool_dir and store.spool_dir.exists() else []
    s3 = raw_s3(store)
    try:
        listing = s3.list_objects_v2(Bucket=store.bucket)
    except s3.exceptions.NoSuchBucket:
        return spooled
    return sorted(spooled + [obj["Key"] for obj in listing.get("Contents", [])])


def uri_for(store: ArtifactStore, sha256: str) -> str:
    if isinstance(store, LocalArtifactStore):
        return store.path_for(sha256).as_uri()
    assert isinstance(store, S3ArtifactStore)
    return f"s3://{store.bucket}/{store.key_for(sha256)}"


async def chunked(data: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


class CountingStream:
    """An endless stream of chunks that counts how many were pulled."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.pulled = 0

    def __aiter__(self) -> CountingStream:
        return self

    async def __anext__(self) -> bytes:
        self.pulled += 1
        return self.chunk


@pytest.mark.asyncio
async def test_round_trip_of_a_multi_chunk_artifact(store: ArtifactStore) -> None:
    data = os.urandom(3 * MiB)
    digest = hashlib.sha256(data).hexdigest()

    stored = await store.put(chunked(data), max_bytes=4 * MiB)

    assert stored.sha256 == digest
    assert stored.size_bytes == len(data)
    assert stored.uri == uri_for(store, digest)
    assert await store.exists(stored.uri)
    pieces = [chunk async for chunk in store.open(stored.uri, chunk_size=256 * KiB)]
    assert len(pieces) == 12
    assert b"".join(pieces) == data
    assert stored_files(store) == [f"artifacts/sha256/{digest}" if isinstance(store, S3ArtifactStore)
                                   else f"sha256/{digest[:2]}/{digest}"]


@pytest.mark.asyncio
async def test_local_layout_and_uri(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()

    stored = await store.put(chunked(data, 100), max_bytes=MiB)

    path = store.root / "sha256" / digest[:2] / digest
    assert stored.uri == f"file://{path}"
    assert path.read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.asyncio
async def test_same_content_twice_is_stored_once(store: ArtifactStore) -> None:
    data = os.urandom(200 * KiB)
    first = await store.put(chunked(data), max_bytes=MiB)
    if isinstance(store, LocalArtifactStore):
        before = os.stat(store.path_for(first.sha256))
    else:
        assert isinstance(store, S3ArtifactStore)
        # With versioning on, a second upload would show up as a second version.
        raw_s3(store).put_bucket_versioning(Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"})

    second = await store.put(chunked(data, 7 * KiB), max_bytes=MiB)

    assert second == first
    assert len(stored_files(store)) == 1
    if isinstance(store, LocalArtifactStore):
        after = os.stat(store.path_for(first.sha256))
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    else:
        assert isinstance(store, S3ArtifactStore)
        versions = raw_s3(store).list_object_versions(Bucket=store.bucket)["Versions"]
        assert len(versions) == 1


@pytest.mark.asyncio
async def test_concurrent_puts_of_the_same_content(store: ArtifactStore) -> None:
    data = os.urandom(300 * KiB)
    results = await asyncio.gather(*(store.put(chunked(data), max_bytes=MiB) for _ in range(4)))
    assert len({r.uri for r in results}) == 1
    assert len(stored_files(store)) == 1
    assert await read_all(store.open(results[0].uri)) == data


@pytest.mark.asyncio
async def test_expected_sha256_mismatch_stores_nothing(store: ArtifactStore) -> None:
    data = os.urandom(300 * KiB)
    actual = hashlib.sha256(data).hexdigest()
    expected = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(InvalidArgument) as raised:
        await store.put(chunked(data), expected_sha256=expected, max_bytes=MiB)

    assert expected in str(raised.value)
    assert actual in str(raised.value)
    assert stored_files(store) == []
    assert not await store.exists(uri_for(store, actual))


@pytest.mark.asyncio
async def test_expected_sha256_is_case_insensitive(store: ArtifactStore) -> None:
    data = b"model bytes"
    digest = hashlib.sha256(data).hexdigest()
    stored = await store.put(chunked(data), expected_sha256=f" {digest.upper()} ", max_bytes=MiB)
    assert stored.sha256 == digest


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "a" * 63, "a" * 65, "sha256:" + "a" * 64])
async def test_malformed_expected_sha256_is_rejected_before_reading(store: ArtifactStore, bad: str) -> None:
    stream = CountingStream(b"x")
    with pytest.raises(InvalidArgument, match="64 hex"):
        await store.put(stream, expected_sha256=bad, max_bytes=MiB)
    assert stream.pulled == 0


@pytest.mark.asyncio
async def test_oversize_stops_reading_at_the_limit(store: ArtifactStore) -> None:
    stream = CountingStream(os.urandom(64 * KiB))
    with pytest.raises(InvalidArgument, match="100000 bytes"):
        await store.put(stream, max_bytes=100_000)
    assert stream.pulled == 2  # the second chunk crosses the limit; nothing more is read
    assert stored_files(store) == []


@pytest.mark.asyncio
async def test_exactly_max_bytes_is_accepted(store: ArtifactStore) -> None:
    stored = await store.put(chunked(os.urandom(100_000), 30_000), max_bytes=100_000)
    assert stored.size_bytes == 100_000


@pytest.mark.asyncio
async def test_empty_artifact_is_rejected(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        await store.put(chunked(b""), max_bytes=MiB)
    assert stored_files(store) == []


@pytest.mark.asyncio
async def test_a_failing_stream_leaves_no_temp_file(store: ArtifactStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(2 * MiB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put(broken(), max_bytes=4 * MiB)
    assert stored_files(store) == []


@pytest.mark.asyncio
async def test_open_of_a_missing_artifact_raises_not_found(store: ArtifactStore) -> None:
    uri = uri_for(store, hashlib.sha256(b"never stored").hexdigest())
    assert not await store.exists(uri)
    with pytest.raises(NotFound):
        await read_all(store.open(uri))


@pytest.mark.asyncio
async def test_uris_of_other_stores_are_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    foreign = ["gs://bucket/key", "http://example.com/model.bin", "s3://someone-elses-bucket/key",
               (tmp_path / "outside.bin").as_uri()]
    for uri in foreign:
        with pytest.raises(InvalidArgument):
            await read_all(store.open(uri))
        with pytest.raises(InvalidArgument):
            await store.exists(uri)


@pytest.mark.asyncio
async def test_import_from_a_file_uri_and_a_plain_path(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(MiB + 123)
    digest = hashlib.sha256(data).hexdigest()
    source = tmp_path / "exported model.bin"  # a space, percent-encoded in the URI
    source.write_bytes(data)

    stored = await store.import_uri(source.as_uri(), expected_sha256=digest, max_bytes=2 * MiB)
    again = await store.import_uri(str(source), expected_sha256=None, max_bytes=2 * MiB)

    assert stored == again
    assert stored.sha256 == digest
    assert stored.uri == uri_for(store, digest)
    assert await read_all(store.open(stored.uri)) == data
    assert source.read_bytes() == data


@pytest.mark.asyncio
async def test_import_checks_sha256_and_size(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(10_000))
    with pytest.raises(InvalidArgument, match="mismatch"):
        await store.import_uri(source.as_uri(), expected_sha256="0" * 64, max_bytes=MiB)
    with pytest.raises(InvalidArgument, match="5000 bytes"):
        await store.import_uri(source.as_uri(), expected_sha256=None, max_bytes=5000)
    assert stored_files(store) == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("uri", "error"), [
    ("file:///no/such/model.bin", NotFound),
    ("/no/such/model.bin", NotFound),
    ("relative/model.bin", InvalidArgument),
    ("file://remote-host/model.bin", InvalidArgument),
    ("https://example.com/model.bin", InvalidArgument),
])
async def test_import_of_a_bad_source(store: ArtifactStore, uri: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await store.import_uri(uri, expected_sha256=None, max_bytes=MiB)


@pytest.mark.asyncio
async def test_s3_imports_from_another_bucket_and_creates_its_own(s3_endpoint: str) -> None:
    store = S3ArtifactStore(f"test-{uuid.uuid4().hex[:12]}", prefix="/models/", endpoint_url=s3_endpoint,
                            **CREDENTIALS)
    s3 = raw_s3(store)
    data = os.urandom(9 * MiB)  # above boto3's 8 MiB multipart threshold
    s3.create_bucket(Bucket="training-outputs")
    s3.put_object(Bucket="training-outputs", Key="runs/42/model.safetensors", Body=data)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_bucket(Bucket=store.bucket)

    stored = await store.import_uri("s3://training-outputs/runs/42/model.safetensors",
                                    expected_sha256=hashlib.sha256(data).hexdigest(), max_bytes=16 * MiB)

    assert stored.uri == f"s3://{store.bucket}/models/sha256/{stored.sha256}"
    head = s3.head_object(Bucket=store.bucket, Key=f"models/sha256/{stored.sha256}")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"] == {"sha256": stored.sha256}
    assert await read_all(store.open(stored.uri)) == data
    with pytest.raises(NotFound):
        await store.import_uri("s3://training-outputs/runs/43/missing", expected_sha256=None, max_bytes=MiB)
    with pytest.raises(NotFound):
        await store.import_uri("s3://no-such-bucket-here/key", expected_sha256=None, max_bytes=MiB)


@pytest.mark.asyncio
async def test_s3_unreachable_server_is_unavailable() -> None:
    store = S3ArtifactStore("flywheel", endpoint_url=f"http://127.0.0.1:{free_port()}", **CREDENTIALS)
    stream = CountingStream(b"x")
    with pytest.raises(Unavailable):
        await store.put(stream, max_bytes=MiB)
    assert stream.pulled == 0  # the bucket is checked before the stream is read
    with pytest.raises(Unavailable):
        await read_all(store.open("s3://flywheel/artifacts/sha256/" + "0" * 64))


def test_store_from_a_file_uri(tmp_path: Path) -> None:
    store = artifact_store_from_uri((tmp_path / "my artifacts").as_uri())
    assert isinstance(store, LocalArtifactStore)
    assert store.root == tmp_path.resolve() / "my artifacts"
    assert LocalArtifactStore(tmp_path / "a" / ".." / "b").root == tmp_path.resolve() / "b"


def test_store_from_a_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = artifact_store_from_uri(".flywheel/artifacts")
    absolute = artifact_store_from_uri(str(tmp_path / "abs"))
    assert isinstance(relative, LocalArtifactStore)
    assert relative.root == tmp_path.resolve() / ".flywheel" / "artifacts"
    assert isinstance(absolute, LocalArtifactStore)
    assert absolute.root == tmp_path.resolve() / "abs"


@pytest.mark.parametrize(("uri", "bucket", "prefix"), [
    ("s3://models/flywheel/artifacts", "models", "flywheel/artifacts"),
    ("s3://models/flywheel/", "models", "flywheel"),
    ("s3://models", "models", ""),
])
def test_store_from_an_s3_uri(uri: str, bucket: str, prefix: str) -> None:
    store = artifact_store_from_uri(uri, s3_endpoint_url="http://minio:9000")
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        bucket, prefix, "http://minio:9000", "us-east-1")
    expected_key = f"{prefix}/sha256/{'a' * 64}" if prefix else f"sha256/{'a' * 64}"
    assert store.key_for("A" * 64) == expected_key


@pytest.mark.parametrize("uri", ["", "  ", "gs://bucket/x", "https://example.com/x", "s3://", "s3:///prefix",
                                 "s3://Not_A_Bucket/x", "file://remote-host/x", "file:relative"])
def test_store_from_an_unsupported_uri(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        artifact_store_from_uri(uri)


@pytest.mark.asyncio
async def test_s3_store_from_uri_uses_the_aws_environment(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # a bucket outside us-east-1 needs a LocationConstraint
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    store = artifact_store_from_uri(f"s3://{bucket}/flywheel", s3_endpoint_url=s3_endpoint)
    assert isinstance(store, S3ArtifactStore)
    assert store.region == "eu-west-1"

    stored = await store.put(chunked(b"tiny model"), max_bytes=MiB)

    assert stored.uri == f"s3://{bucket}/flywheel/sha256/{stored.sha256}"
    assert await read_all(store.open(stored.uri)) == b"tiny model"
    assert raw_s3(store).get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
