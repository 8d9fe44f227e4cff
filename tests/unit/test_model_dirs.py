"""Model directories as artifacts: a deterministic tar, a safe extraction, a content-addressed cache."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from flywheel.common import model_dirs


def make_model(root: Path) -> Path:
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 32}')
    (root / "1_Pooling" / "config.json").write_text("{}")
    (root / "weights.bin").write_bytes(os.urandom(3000))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    return root


def test_packing_is_deterministic_whatever_the_times_owners_and_modes(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    first = model_dirs.pack_bytes(model)
    os.utime(model / "config.json", (1, 1))
    (model / "weights.bin").chmod(0o600)
    assert model_dirs.pack_bytes(model) == first
    copy = tmp_path / "copy"
    model_dirs.unpack(io.BytesIO(first), copy)
    assert model_dirs.pack_bytes(copy) == first  # the same files elsewhere pack to the same bytes
    (model / "config.json").write_text('{"hidden_size": 33}')
    assert model_dirs.pack_bytes(model) != first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {m.mtime for m in members} == {0} and {m.uid for m in members} == {0}


def test_round_trip_keeps_contents_and_executable_bits(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    sha = model_dirs.pack_to_file(model, tmp_path / "m.tar")
    assert sha == model_dirs.file_sha256(tmp_path / "m.tar")
    out = model_dirs.unpack_cached(tmp_path / "m.tar", tmp_path / "cache", sha)
    assert out == tmp_path / "cache" / sha
    for name in ("config.json", "1_Pooling/config.json", "weights.bin", "run.sh"):
        assert (out / name).read_bytes() == (model / name).read_bytes()
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "weights.bin").stat().st_mode & 0o777 == 0o644
    # A second unpack of the same sha reuses the folder; no staging folders are left behind.
    assert model_dirs.unpack_cached(io.BytesIO(b"not even a tar"), tmp_path / "cache", sha) == out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]


def test_symlinked_files_are_packed_as_files_and_symlinked_directories_refused(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    (tmp_path / "blob").write_text("shared blob")
    (model / "tokenizer.json").symlink_to(tmp_path / "blob")
    out = tmp_path / "out"
    model_dirs.unpack(io.BytesIO(model_dirs.pack_bytes(model)), out)
    assert (out / "tokenizer.json").read_text() == "shared blob" and not (out / "tokenizer.json").is_symlink()
    (model / "loop").symlink_to(model, target_is_directory=True)
    with pytest.raises(ValueError, match="symlinked directory"):
        model_dirs.pack_bytes(model)


def tar_with(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize("bad,message", [
    ((member("/etc/evil"), b"x"), "absolute"),
    ((member("../evil"), b"x"), "climbs out"),
    ((member("a/../../evil"), b"x"), "climbs out"),
    ((member("link", tarfile.SYMTYPE, "/etc/passwd"), None), "symlink"),
    ((member("hard", tarfile.LNKTYPE, "config.json"), None), "hard link"),
    ((member("dev", tarfile.CHRTYPE), None), "special file"),
])
def test_unsafe_archives_are_refused_and_nothing_is_left(tmp_path: Path, bad: tuple, message: str) -> None:
    data = tar_with((member("config.json"), b"{}"), bad)
    with pytest.raises(model_dirs.UnsafeArchive, match=message):
        model_dirs.unpack(io.BytesIO(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil").exists() and not Path("/etc/evil").exists()
    sha = "0" * 64
    with pytest.raises(model_dirs.UnsafeArchive):
        model_dirs.unpack_cached(io.BytesIO(data), tmp_path / "cache", sha)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written model in the cache


def test_size_limit_and_garbage(tmp_path: Path) -> None:
    data = tar_with((member("a"), b"x" * 100), (member("b"), b"y" * 100))
    with pytest.raises(model_dirs.UnsafeArchive, match="more than 150 bytes"):
        model_dirs.unpack(io.BytesIO(data), tmp_path / "out", max_bytes=150)
    with pytest.raises(model_dirs.UnsafeArchive, match="not a readable tar"):
        model_dirs.unpack(io.BytesIO(b"garbage" * 100), tmp_path / "out2")
    with pytest.raises(ValueError, match="sha256"):
        model_dirs.cached_dir(tmp_path, "../../etc")
