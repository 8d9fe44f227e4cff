"""The registry's validation rules, one function at a time."""

from __future__ import annotations

import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.registry import domain


@pytest.mark.parametrize("value", ["0.0.1", "1.2.3", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc.1+sha.9"])
def test_valid_semver(value: str) -> None:
    assert domain.semver(value) == value


@pytest.mark.parametrize("value", ["1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "1..3"])
def test_invalid_semver(value: str) -> None:
    with pytest.raises(InvalidArgument, match="not a semantic version"):
        domain.semver(value)


@pytest.mark.parametrize("name", ["fraud", "Fraud-Model_2", "a", "smollm2.135m", "x" * 128])
def test_valid_model_names(name: str) -> None:
    assert domain.model_name(name) == name


@pytest.mark.parametrize(("name", "fragment"), [("", "empty"), ("-lead", "valid"), ("has space", "valid"),
                                                 ("a/b", "valid"), ("x" * 129, "valid")])
def test_invalid_model_names(name: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        domain.model_name(name)


@pytest.mark.parametrize("alias", ["", "Champion", "1st", "with space", "a" * 65])
def test_invalid_aliases(alias: str) -> None:
    with pytest.raises(InvalidArgument, match="alias"):
        domain.alias(alias)


def test_sha256_is_normalized_and_checked() -> None:
    assert domain.sha256("AB" * 32) == "ab" * 32
    assert domain.sha256("") == ""
    with pytest.raises(InvalidArgument, match="64 hexadecimal"):
        domain.sha256("xyz")


def test_parse_ref_forms() -> None:
    assert domain.parse_ref("fraud:3").version == 3
    assert domain.parse_ref("fraud@challenger").alias == "challenger"
    assert domain.parse_ref("fraud").alias == domain.CHAMPION
    with pytest.raises(InvalidArgument, match="not a number"):
        domain.parse_ref("fraud:three")
    with pytest.raises(InvalidArgument, match="positive"):
        domain.parse_ref("fraud:0")


def test_import_prefixes_are_folders_never_a_bare_scheme(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from flywheel.registry.config import RegistrySettings

    default = RegistrySettings(_env_file=None, home=tmp_path)
    assert default.allowed_import_prefixes() == ((tmp_path / "imports").resolve().as_uri() + "/",)
    configured = RegistrySettings(_env_file=None, home=tmp_path,
                                  import_prefixes=["s3://models/team-a", f"file://{tmp_path}/drop/../drop"])
    assert configured.allowed_import_prefixes() == ("s3://models/team-a/", (tmp_path / "drop").as_uri() + "/")
    for bad in ("s3://", "https://x/", "file://host/dir", "relative/dir"):
        with pytest.raises(ValidationError, match="must be s3://<bucket>"):
            RegistrySettings(_env_file=None, home=tmp_path, import_prefixes=[bad])


def test_importable_uri_resolves_and_checks_prefixes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    allowed = (tmp_path.as_uri() + "/imports/", "s3://models/")
    inside = tmp_path / "imports" / "m.bin"
    assert domain.importable_uri(str(inside), allowed) == inside.as_uri()
    assert domain.importable_uri("s3://models/key", allowed) == "s3://models/key"
    for outside in (str(tmp_path / "imports" / ".." / "secret"), "file:///etc/passwd", "https://x/y",
                    tmp_path.as_uri() + "/imports-evil/m.bin", "s3://models-evil/key", "s3://other/key"):
        with pytest.raises(InvalidArgument, match="not under an allowed import location"):
            domain.importable_uri(outside, allowed)
    with pytest.raises(InvalidArgument, match="remote host"):
        domain.importable_uri("file://otherhost/etc/passwd", allowed)
