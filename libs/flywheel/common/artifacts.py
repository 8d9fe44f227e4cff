"""The artifact store port: model files addressed by their sha256, on the local disk or in S3.

`LocalArtifactStore` is the embedded default, `S3ArtifactStore` the production adapter;
`artifact_store_from_uri` picks one from configuration.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import boto3.session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from flywheel.common.errors import InvalidArgument, NotFound, Unavailable

DEFAULT_CHUNK_SIZE = 1 << 20
# put() hands bytes to its worker thread in pieces of about this size, not once per chunk.
_WRITE_BATCH_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact landed and what it is; `sha256` is lowercase hex."""

    uri: str
    sha256: str
    size_bytes: int


class _SpoolFile:
    """The temp file put() streams into; removed afterwards unless an adapter moved it into place."""

    def __init__(self, directory: Path | None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix="put-", suffix=".part")
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self.moved = False

    def finish(self, *, fsync: bool) -> None:
        self.file.flush()
        if fsync:
            os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        try:
            self.file.close()  # may fail again flushing after a failed write (disk full)
        except OSError:
            pass
        finally:
            if not self.moved:
                self.path.unlink(missing_ok=True)


class ArtifactStore(abc.ABC):
    """Content-addressed artifact storage: put bytes, get back a URI; read the URI back.

    Storing the same bytes twice writes them once and returns the same URI.
    """

    # Whether put() makes the spooled bytes durable before handing them to _store_spooled.
    _fsync_spool: bool = False

    async def put(
        self, chunks: AsyncIterable[bytes], *, expected_sha256: str | None = None, max_bytes: int
    ) -> StoredArtifact:
        """Store a stream of bytes under its sha256.

        The stream is spooled to a temp file while it is hashed and counted; reading stops as
        soon as it passes `max_bytes`. Nothing is stored unless every check passes.
        """
        expected = _normalize_sha256(expected_sha256) if expected_sha256 is not None else None
        if max_bytes <= 0:
            raise InvalidArgument(f"max_bytes must be positive, got {max_bytes}")
        # Made and removed synchronously (quick syscalls), so a cancelled put() cannot leak it.
        spool = _SpoolFile(self._spool_dir())
        try:
            digest, size = await _spool_chunks(chunks, spool.file, max_bytes)
            await asyncio.to_thread(spool.finish, fsync=self._fsync_spool)
            if size == 0:
                raise InvalidArgument("artifact is empty")
            if expected is not None and digest != expected:
                raise InvalidArgument(f"sha256 mismatch: expected {expected}, got {digest}")
            uri = await self._store_spooled(spool, digest, size)
        finally:
            spool.discard()
        return StoredArtifact(uri=uri, sha256=digest, size_bytes=size)

    async def import_uri(self, uri: str, *, expected_sha256: str | None, max_bytes: int) -> StoredArtifact:
        """Copy an artifact that exists at `uri` (see `read_uri`) into this store."""
        async with contextlib.aclosing(self.read_uri(uri)) as chunks:
            return await self.put(chunks, expected_sha256=expected_sha256, max_bytes=max_bytes)

    async def read_uri(self, uri: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream any source this store can read, in or outside the store.

        Every store reads `file://` URIs and absolute paths; adapters add their own schemes.
        """
        async for chunk in _read_file(_local_path(uri), chunk_size):
            yield chunk

    @abc.abstractmethod
    def open(self, uri: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream the bytes of an artifact in this store (implemented as an async generator).

        Raises `NotFound` if it does not exist, `InvalidArgument` if the URI is not of this store.
        """

    @abc.abstractmethod
    async def exists(self, uri: str) -> bool:
        """Whether an artifact of this store exists at `uri`."""

    @abc.abstractmethod
    def _spool_dir(self) -> Path | None:
        """Where put() spools incoming bytes; None means the system temp directory."""

    @abc.abstractmethod
    async def _store_spooled(self, spool: _SpoolFile, sha256: str, size: int) -> str:
        """Store the verified, closed spool file under its content address; return its URI."""


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under `<root>/sha256/<first 2 hex>/<hex>`, URIs `file://<absolute path>`."""

    _fsync_spool = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def path_for(self, sha256: str) -> Path:
        """The file an artifact with this sha256 is (or would be) stored in."""
        digest = _normalize_sha256(sha256)
        return self.root / "sha256" / digest[:2] / digest

    async def open(self, uri: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        async for chunk in _read_file(self._own_path(uri), chunk_size):
            yield chunk

    async def exists(self, uri: str) -> bool:
        return await asyncio.to_thread(self._own_path(uri).is_file)

    def _own_path(self, uri: str) -> Path:
        path = _local_path(uri).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidArgument(f"{uri!r} is not in the artifact store at {self.root}")
        return path

    def _spool_dir(self) -> Path:
        return self.root / "tmp"

    async def _store_spooled(self, spool: _SpoolFile, sha256: str, size: int) -> str:
        return await asyncio.to_thread(self._move_into_place, spool, sha256, size)

    def _move_into_place(self, spool: _SpoolFile, sha256: str, size: int) -> str:
        target = self.path_for(sha256)
        # A file of another size under this name is damaged: replace it.
        if not (target.is_file() and target.stat().st_size == size):
            target.parent.mkdir(parents=True, exist_ok=True)
            spool.path.chmod(0o644)  # mkstemp makes it 0600
            os.replace(spool.path, target)
            spool.moved = True
            _fsync_directory(target.parent)  # make the rename itself durable
        return target.as_uri()


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects `<prefix>/sha256/<hex>` in one bucket, URIs `s3://<bucket>/<key>`.

    boto3 is synchronous, so every call runs in a worker thread. The bucket is created on
    the first put if it does not exist.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "artifacts",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`spool_dir` holds incoming artifacts until they are uploaded (default: the system temp dir)."""
        if not _BUCKET_NAME.fullmatch(bucket):
            raise InvalidArgument(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._credentials = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        # Thread locks, not asyncio ones: they are taken in worker threads.
        self._client_lock = threading.Lock()
        self._bucket_lock = threading.Lock()
        self._s3: Any = None
        self._bucket_ready = False

    def key_for(self, sha256: str) -> str:
        """The object key an artifact with this sha256 is (or would be) stored under."""
        key = f"sha256/{_normalize_sha256(sha256)}"
        return f"{self.prefix}/{key}" if self.prefix else key

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist; checks the server only on the first call."""
        if not self._bucket_ready:
            with self._errors(f"s3://{self.bucket}"):
                await asyncio.to_thread(self._ensure_bucket)

    async def put(
        self, chunks: AsyncIterable[bytes], *, expected_sha256: str | None = None, max_bytes: int
    ) -> StoredArtifact:
        # Before reading the stream, so an unreachable server fails fast.
        await self.ensure_bucket()
        return await super().put(chunks, expected_sha256=expected_sha256, max_bytes=max_bytes)

    async def read_uri(self, uri: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream `s3://bucket/key` (any bucket these credentials can read), `file://` URIs or paths."""
        if urlsplit(uri).scheme.lower() != "s3":
            async for chunk in super().read_uri(uri, chunk_size):
                yield chunk
            return
        bucket, key = _parse_s3_uri(uri)
        async for chunk in self._read_object(bucket, key, chunk_size):
            yield chunk

    async def open(self, uri: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        async for chunk in self._read_object(self.bucket, self._own_key(uri), chunk_size):
            yield chunk

    async def exists(self, uri: str) -> bool:
        try:
            with self._errors(uri):
                await self._call("head_object", Bucket=self.bucket, Key=self._own_key(uri))
        except NotFound:
            return False
        return True

    def _own_key(self, uri: str) -> str:
        if urlsplit(uri).scheme.lower() != "s3":
            raise InvalidArgument(f"unsupported artifact URI {uri!r}: this store holds s3://{self.bucket}/ URIs")
        bucket, key = _parse_s3_uri(uri)
        if bucket != self.bucket:
            raise InvalidArgument(f"{uri!r} is not in the artifact store s3://{self.bucket}/")
        return key

    async def _read_object(self, bucket: str, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        _check_chunk_size(chunk_size)
        uri = f"s3://{bucket}/{key}"
        with self._errors(uri):
            response = await self._call("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            while True:
                with self._errors(uri):
                    chunk = await asyncio.to_thread(body.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def _spool_dir(self) -> Path | None:
        return self.spool_dir

    async def _store_spooled(self, spool: _SpoolFile, sha256: str, size: int) -> str:
        key = self.key_for(sha256)
        uri = f"s3://{self.bucket}/{key}"
        with self._errors(uri):
            await asyncio.to_thread(self._upload_unless_present, spool.path, key, sha256, size)
        return uri

    def _upload_unless_present(self, path: Path, key: str, sha256: str, size: int) -> None:
        s3 = self._client()
        try:
            head = s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if not _is_not_found(e):
                raise
        else:
            # Same key, another size: not something put() wrote, so replace it.
            if head["ContentLength"] == size:
                return
        with path.open("rb") as f:
            # upload_fileobj switches to a multipart upload for big files.
            s3.upload_fileobj(
                f, self.bucket, key,
                ExtraArgs={"ContentType": "application/octet-stream", "Metadata": {"sha256": sha256}},
            )

    def _ensure_bucket(self) -> None:
        with self._bucket_lock:
            if self._bucket_ready:
                return
            s3 = self._client()
            try:
                s3.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if not _is_not_found(e):
                    raise
                location = {} if self.region == "us-east-1" else {
                    "CreateBucketConfiguration": {"LocationConstraint": self.region}
                }
                try:
                    s3.create_bucket(Bucket=self.bucket, **location)
                except ClientError as e2:
                    if e2.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                        raise
            self._bucket_ready = True

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(lambda: getattr(self._client(), method)(**kwargs))

    def _client(self) -> Any:
        """The boto3 client, made on first use (in a worker thread: it takes a while)."""
        if self._s3 is not None:
            return self._s3
        with self._client_lock:
            if self._s3 is None:
                compat: dict[str, Any] = {}
                if self.endpoint_url:
                    # S3-compatible servers (MinIO, Ceph...) want path-style addressing and some
                    # reject botocore's newer default checksums; put() verifies sha256 itself.
                    compat = {
                        "s3": {"addressing_style": "path"},
                        "request_checksum_calculation": "when_required",
                        "response_checksum_validation": "when_required",
                    }
                config = Config(
                    region_name=self.region,
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    **compat,
                )
                session = boto3.session.Session(**self._credentials, region_name=self.region)
                self._s3 = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._s3

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Map botocore errors to domain errors."""
        try:
            yield
        except ClientError as e:
            if _is_not_found(e):
                raise NotFound(f"artifact {uri} does not exist") from e
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise Unavailable(f"object storage failed on {uri}: {e}") from e
            raise
        except (BotoConnectionError, HTTPClientError) as e:
            where = self.endpoint_url or "AWS S3"
            raise Unavailable(f"object storage at {where} is unreachable: {e}") from e


def artifact_store_from_uri(uri: str, *, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store a configured location names.

    `file:///abs/path` or a plain path (relative to the working directory) is a local store;
    `s3://bucket/prefix` is an S3 store (no prefix: keys at the bucket root) whose credentials
    and region come from the standard AWS environment variables and config files.
    """
    if not uri.strip():
        raise InvalidArgument("artifact store location is empty")
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "":
        return LocalArtifactStore(Path(uri))
    if scheme == "file":
        return LocalArtifactStore(_local_path(uri))
    if scheme == "s3":
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return S3ArtifactStore(bucket, prefix, endpoint_url=s3_endpoint_url, region=region)
    raise InvalidArgument(f"unsupported artifact store location {uri!r}: use file://, s3:// or a path")


async def _spool_chunks(chunks: AsyncIterable[bytes], file: IO[bytes], max_bytes: int) -> tuple[str, int]:
    """Write chunks to `file`, hashing as they go; returns (sha256 hex, size)."""
    digest = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0

    def write(data: bytes) -> None:
        digest.update(data)  # hashlib releases the GIL on large inputs
        file.write(data)

    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise InvalidArgument(f"artifact is larger than the limit of {max_bytes} bytes")
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= _WRITE_BATCH_BYTES:
            await asyncio.to_thread(write, b"".join(pending))
            pending.clear()
            pending_size = 0
    if pending:
        await asyncio.to_thread(write, b"".join(pending))
    return digest.hexdigest(), size


async def _read_file(path: Path, chunk_size: int) -> AsyncIterator[bytes]:
    _check_chunk_size(chunk_size)
    try:
        file = await asyncio.to_thread(path.open, "rb")
    except FileNotFoundError as e:
        raise NotFound(f"artifact {path.as_uri()} does not exist") from e
    except IsADirectoryError as e:
        raise InvalidArgument(f"{path.as_uri()} is a directory, not an artifact") from e
    try:
        while chunk := await asyncio.to_thread(file.read, chunk_size):
            yield chunk
    finally:
        file.close()


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be positive, got {chunk_size}")


def _local_path(uri: str) -> Path:
    """The path of a `file://` URI (percent-decoded) or of a plain absolute path."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "":
        path = Path(uri)
    elif scheme == "file":
        rest = uri.split(":", 1)[1]
        if rest.startswith("//"):
            host, _, tail = rest[2:].partition("/")
            if host.lower() not in ("", "localhost"):
                raise InvalidArgument(f"file URI {uri!r} names a remote host {host!r}")
            rest = "/" + tail
        path = Path(unquote(rest))
    else:
        raise InvalidArgument(f"unsupported artifact URI scheme {scheme!r} in {uri!r}")
    if not path.is_absolute():
        raise InvalidArgument(f"artifact path {uri!r} is not absolute")
    return path


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; the key is taken verbatim, as the AWS CLI does."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket or not key:
        raise InvalidArgument(f"S3 URI {uri!r} needs a bucket and a key: s3://bucket/key")
    return bucket, key


def _normalize_sha256(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidArgument(f"sha256 must be 64 hex characters, got {value!r}")
    return digest


def _is_not_found(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound") or status == 404


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
