"""Model directories as artifacts: the same files make the same tar (same sha256), whatever the order they
were written in or their times and modes; unpacking is content-addressed, once, and refuses escapes."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.common.model_dirs import cached, pack_dir, pack_dir_file, unpack


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {"config.json": b"{}", "model.safetensors": os.urandom(5000), "sub/tokenizer.json": b'{"a": 1}'}


def test_the_same_files_pack_to_the_same_bytes(tmp_path: Path) -> None:
    a = write(tmp_path / "a", FILES)
    b = write(tmp_path / "b", dict(reversed(list(FILES.items()))))
    os.utime(b / "config.json", (1, 1))
    (b / "model.safetensors").chmod(0o600)
    assert pack_dir(a) == pack_dir(b)
    sha = pack_dir_file(a, tmp_path / "a.tar")
    assert sha == hashlib.sha256(pack_dir(b)).hexdigest()
    write(b, {"config.json": b'{"x": 1}'})
    assert pack_dir(a) != pack_dir(b)


def test_unpack_is_content_addressed_and_done_once(tmp_path: Path) -> None:
    data = pack_dir(write(tmp_path / "src", FILES))
    sha = hashlib.sha256(data).hexdigest()
    assert cached(sha, tmp_path / "cache") is None
    target = unpack(data, tmp_path / "cache")
    assert target == tmp_path / "cache" / sha and cached(sha, tmp_path / "cache") == target
    assert {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()} == FILES
    (target / "marker").write_text("kept")
    assert unpack(data, tmp_path / "cache") == target and (target / "marker").exists()  # not unpacked again
    (tmp_path / "a.tar").write_bytes(data)
    assert unpack(tmp_path / "a.tar", tmp_path / "cache2", sha256=sha) == tmp_path / "cache2" / sha
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]  # no scratch left behind


@pytest.mark.parametrize("name, kind", [("../evil", tarfile.REGTYPE), ("/abs", tarfile.REGTYPE),
                                        ("link", tarfile.SYMTYPE), ("dev", tarfile.CHRTYPE)])
def test_unpack_refuses_escaping_paths_and_special_files(tmp_path: Path, name: str, kind: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with pytest.raises(InvalidArgument):
        unpack(buffer.getvalue(), tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())
    with pytest.raises(InvalidArgument, match="tar"):
        unpack(b"not a tar at all", tmp_path / "cache")
