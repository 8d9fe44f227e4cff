"""Model directories as registry artifacts: a deterministic tar of a directory (the same files give the
same bytes, so the same sha256), and a safe unpack into a content-addressed cache.

A Hugging Face model or a PEFT adapter is a directory (config, safetensors, tokenizer); the registry
stores one file per version. `pack_dir` writes the directory's regular files in sorted order with
fixed metadata (mtime 0, uid/gid 0, mode 0644, no owner names), uncompressed (safetensors do not
compress). `unpack` extracts into `<cache_root>/<sha256>/` once: regular files and directories only,
no absolute paths, no `..`, no links or devices; extracted into a temporary sibling and renamed into
place, so a reader never sees half a directory and two processes racing end with one copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from flywheel.common.errors import InvalidArgument

CHUNK = 1 << 20


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every regular file under root, sorted; symlinks are followed only to files
    inside root (a Hugging Face cache's blobs are symlinked), anything else is refused."""
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            real = path.resolve()
            if not real.is_file():
                raise InvalidArgument(f"{path}: not a regular file; a model directory holds files only")
            yield PurePosixPath(path.relative_to(root)).as_posix(), real


def pack_dir_to(path: Path | str, out: IO[bytes], *, on_progress: Callable[[int], None] | None = None) -> None:
    """Write the deterministic tar of directory `path` to the binary stream `out`."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, real in _files(root):
            info = tarfile.TarInfo(name)
            info.size = real.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with real.open("rb") as f:
                tar.addfile(info, _Progress(f, on_progress) if on_progress else f)


class _Progress(io.RawIOBase):
    def __init__(self, f: IO[bytes], on_progress: Callable[[int], None]) -> None:
        self.f = f
        self.on_progress = on_progress

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.f.read(size)
        self.on_progress(len(data))
        return data


def pack_dir(path: Path | str) -> bytes:
    """The deterministic tar of directory `path`, in memory (use `pack_dir_file` for large models)."""
    buffer = io.BytesIO()
    pack_dir_to(path, buffer)
    return buffer.getvalue()


def pack_dir_file(path: Path | str, target: Path | str, *,
                  on_progress: Callable[[int], None] | None = None) -> str:
    """Write the deterministic tar of `path` to the file `target`; returns its sha256."""
    with Path(target).open("wb") as out:
        pack_dir_to(path, out, on_progress=on_progress)
    return file_sha256(Path(target))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached(sha256: str, cache_root: Path | str) -> Path | None:
    """The directory already unpacked for this artifact sha256, or None."""
    target = Path(cache_root) / sha256
    return target if target.is_dir() else None


def _safe_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or not member.name or member.name.startswith("/"):
            raise InvalidArgument(f"model archive member {member.name!r}: absolute or escaping path")
        if not (member.isfile() or member.isdir()):
            raise InvalidArgument(f"model archive member {member.name!r}: only files and directories are allowed")
        yield member


def unpack(data: bytes | Path | str, cache_root: Path | str, *, sha256: str = "") -> Path:
    """Unpack a model directory tar (its bytes, or a file) into `<cache_root>/<sha256>/` and return that
    directory; when it is there already nothing is read. `sha256` (the registry's, of the tar) saves
    hashing it again; it is not checked here (the registry client checks downloads)."""
    root = Path(cache_root)
    if not sha256:
        sha256 = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else file_sha256(Path(data))
    target = root / sha256
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=root))
    try:
        with contextlib.ExitStack() as stack:
            source = io.BytesIO(data) if isinstance(data, bytes) else stack.enter_context(Path(data).open("rb"))
            try:
                tar = stack.enter_context(tarfile.open(fileobj=source, mode="r|*"))
            except tarfile.TarError as exc:
                raise InvalidArgument(f"not a model directory archive (tar): {exc}") from None
            for member in _safe_members(tar):
                path = scratch / member.name
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                with path.open("wb") as out:
                    shutil.copyfileobj(extracted, out, CHUNK)
        try:
            scratch.rename(target)
        except OSError:  # another process put it in place first
            if not target.is_dir():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target
