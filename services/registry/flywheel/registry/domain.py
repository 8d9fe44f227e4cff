"""Registry rules: what a valid model name, alias, semver and version reference is."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flywheel.common.errors import InvalidArgument
from flywheel.proto.registry.v1 import registry_service_pb2 as pb

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Semantic Versioning 2.0.0 (semver.org), without a leading "v".
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

CHAMPION = "champion"
PREVIOUS = "previous"


def model_name(name: str, field: str = "model_name") -> str:
    if not name:
        raise InvalidArgument(f"{field} is empty")
    if not MODEL_NAME.match(name):
        raise InvalidArgument(
            f"{field} {name!r} is not a valid model name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def alias(name: str) -> str:
    if not name:
        raise InvalidArgument("alias is empty")
    if not ALIAS.match(name):
        raise InvalidArgument(
            f"alias {name!r} is not valid: use 1-64 lowercase letters, digits, '_' or '-', starting with a letter")
    return name


def version_number(version: int, field: str = "version") -> int:
    if version <= 0:
        raise InvalidArgument(f"{field} must be a positive version number, got {version}")
    return version


def semver(value: str) -> str:
    if value and not SEMVER.match(value):
        raise InvalidArgument(f"semver {value!r} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])")
    return value


def sha256(value: str) -> str:
    if value and not SHA256.match(value):
        raise InvalidArgument(f"expected_sha256 {value!r} is not 64 hexadecimal characters")
    return value.lower()


def importable_uri(uri: str, allowed_prefixes: tuple[str, ...]) -> str:
    """The normalized `uri` if it lies under one of `allowed_prefixes`, else InvalidArgument.

    File URIs are resolved first, so `..` and symlinks cannot step outside an allowed folder.
    """
    parts = urlsplit(uri)
    if parts.scheme == "file" or (not parts.scheme and uri.startswith("/")):
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"artifact_uri {uri!r} names a remote host; use a local path or s3://")
        uri = Path(unquote(parts.path if parts.scheme else uri)).resolve().as_uri()
    if not any(uri.startswith(prefix) for prefix in allowed_prefixes):
        raise InvalidArgument(
            f"artifact_uri {uri!r} is not under an allowed import location ({', '.join(allowed_prefixes)}); "
            "stream the bytes instead, or set FLYWHEEL_REGISTRY_IMPORT_PREFIXES")
    return uri


def ref(r: pb.ModelVersionRef) -> pb.ModelVersionRef:
    """Check a version reference: a model name and exactly one of version / alias."""
    model_name(r.model_name, "ref.model_name")
    which = r.WhichOneof("selector")
    if which is None:
        raise InvalidArgument(f"ref for model {r.model_name!r} names neither a version nor an alias")
    if which == "version":
        version_number(r.version, "ref.version")
    else:
        alias(r.alias)
    return r


def parse_ref(text: str) -> pb.ModelVersionRef:
    """Parse the CLI's `name:version`, `name@alias` or `name` (= name@champion)."""
    if "@" in text:
        name, _, a = text.partition("@")
        return ref(pb.ModelVersionRef(model_name=name, alias=a))
    if ":" in text:
        name, _, v = text.partition(":")
        if not v.isdigit():
            raise InvalidArgument(f"version {v!r} in {text!r} is not a number")
        return ref(pb.ModelVersionRef(model_name=name, version=int(v)))
    return ref(pb.ModelVersionRef(model_name=text, alias=CHAMPION))
