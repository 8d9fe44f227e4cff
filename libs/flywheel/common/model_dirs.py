"""Model directories as registry artifacts: a directory (a sentence-transformers model, a Hugging Face
LLM) packed as a deterministic tar, and unpacked safely into a content-addressed cache.

`pack` writes the same bytes for the same files (sorted entries, no timestamps, owners or modes of the
machine that packed it), so packing one directory twice gives one sha256 and the registry stores it
once. `unpack` refuses what a model directory never holds (absolute paths, `..`, links, devices) and
`unpack_cached` extracts into `<cache>/<sha256>/` once, atomically, so processes sharing the cache
(several services under one FLYWHEEL_HOME) never see a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

# Members are written in 1 MiB pieces and read the same way.
_PIECE = 1 << 20
_SHA256_HEX = frozenset("0123456789abcdef")


class UnsafeArchive(ValueError):
    """A tar that is not a plain model directory (or is larger than allowed): nothing was extracted
    outside the destination, and the partial extraction is removed."""


def _entries(directory: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of every directory and file under `directory`, sorted by name.
    Symlinked files are packed as the files they point at; a symlinked directory is refused (it may
    loop, or reach outside the model)."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(directory):
        base = Path(root)
        for name in dirs:
            path = base / name
            if path.is_symlink():
                raise ValueError(f"{path} is a symlinked directory: pack a directory without them")
            found.append((path.relative_to(directory).as_posix(), path))
        for name in files:
            path = base / name
            found.append((path.relative_to(directory).as_posix(), path))
    return iter(sorted(found))


def pack(directory: Path, out: IO[bytes]) -> None:
    """Write `directory` as an uncompressed tar to `out`: entries sorted by name, mtime 0, owner 0,
    mode 0644 (0755 for directories and executables), so equal contents give equal bytes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _entries(directory):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            st = path.stat()  # follows a symlinked file
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{path} is not a regular file")
            info.type = tarfile.REGTYPE
            info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            info.size = st.st_size
            with path.open("rb") as f:
                tar.addfile(info, f)


def pack_to_file(directory: Path, destination: Path) -> str:
    """`pack` into the file `destination`; returns the tar's sha256."""
    with destination.open("wb") as f:
        pack(directory, f)
    return file_sha256(destination)


def pack_bytes(directory: Path) -> bytes:
    """`pack` in memory (small directories: tests, prompts)."""
    buffer = io.BytesIO()
    pack(directory, buffer)
    return buffer.getvalue()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _member_path(destination: Path, member: tarfile.TarInfo) -> Path:
    name = member.name
    if not name or "\\" in name or "\x00" in name:
        raise UnsafeArchive(f"member name {name!r} is not a plain relative path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("/"):
        raise UnsafeArchive(f"member {name!r} is an absolute path")
    if any(part == ".." for part in pure.parts):
        raise UnsafeArchive(f"member {name!r} climbs out of the directory ('..')")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        raise UnsafeArchive(f"member name {name!r} names no file")
    target = destination.joinpath(*parts)
    if destination not in target.parents:
        raise UnsafeArchive(f"member {name!r} lands outside the directory")
    return target


def unpack(source: Path | IO[bytes], destination: Path, *, max_bytes: int | None = None) -> None:
    """Extract a model-directory tar into `destination` (a new or empty directory; removed on error).

    Only directories and regular files are accepted; absolute names, `..`, symlinks, hard links and
    devices raise `UnsafeArchive`, as does content beyond `max_bytes` in total. Files get mode 0644
    (0755 when executable in the tar), never the tar's owners. On error, what was extracted is removed.
    """
    destination = Path(destination).resolve()
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise ValueError(f"{destination} is not empty: unpack into a new directory")
    total = 0
    try:
        with contextlib.ExitStack() as stack:
            fileobj = stack.enter_context(Path(source).open("rb")) if isinstance(source, str | Path) else source
            tar = stack.enter_context(tarfile.open(fileobj=fileobj, mode="r|*"))
            for member in tar:
                target = _member_path(destination, member)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
                    raise UnsafeArchive(f"member {member.name!r} is a {kind}; a model directory holds files only")
                total += member.size
                if max_bytes is not None and total > max_bytes:
                    raise UnsafeArchive(f"the archive holds more than {max_bytes} bytes")
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                with target.open("xb") as out:
                    shutil.copyfileobj(extracted, out, _PIECE)
                target.chmod(0o755 if member.mode & stat.S_IXUSR else 0o644)
    except FileExistsError as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise UnsafeArchive(f"the archive names {exc.filename} twice") from exc
    except tarfile.TarError as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise UnsafeArchive(f"not a readable tar: {exc}") from exc
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def cached_dir(cache: Path, sha256: str) -> Path:
    """Where the directory packed in the tar with this sha256 lives in `cache` (it may not exist yet)."""
    if len(sha256) != 64 or not set(sha256) <= _SHA256_HEX:
        raise ValueError(f"{sha256!r} is not a lowercase sha256 hex digest")
    return Path(cache) / sha256


def unpack_cached(source: Path | IO[bytes], cache: Path, sha256: str, *, max_bytes: int | None = None) -> Path:
    """The directory of the tar `source` (whose sha256 the caller checked) in `cache`, extracted on
    first use: into a temporary folder that is renamed to `<cache>/<sha256>` when complete, so a crash
    leaves no half directory and concurrent unpackers of the same tar agree on one copy."""
    target = cached_dir(cache, sha256)
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{sha256[:12]}-", dir=cache))
    try:
        unpack(source, staging, max_bytes=max_bytes)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not "someone else finished first"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
