"""The registry's domain: the types its use cases work on (free of the gRPC API's messages) and
its rules, what a valid model name, alias, semver and version reference is.

Lineage stays `flywheel.events.v1.Lineage`: the same message travels in events and is stored as JSON.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flywheel.common.errors import InvalidArgument
from flywheel.proto.events.v1 import common_pb2

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


class PromotionMode(enum.IntEnum):
    """How a model's champion moves; the numbers are the database's and flywheel.registry.v1.PromotionMode's."""

    MANUAL = 1
    AUTOMATIC = 2


@dataclass(frozen=True)
class VersionRef:
    """One version of a model: by number, or by what an alias points to now (exactly one is set)."""

    model_name: str
    version: int | None = None
    alias: str | None = None


@dataclass(frozen=True)
class Artifact:
    """Where a version's bytes live (content-addressed) and the file name the client gave."""

    uri: str
    sha256: str
    size_bytes: int
    filename: str = ""


@dataclass
class ModelVersion:
    model_name: str
    version: int
    semver: str
    kind: int  # flywheel.events.v1.ModelKind
    framework: str
    description: str
    artifact: Artifact
    created_at: datetime
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: common_pb2.Lineage = field(default_factory=common_pb2.Lineage)
    # Aliases that point at this version now, sorted.
    aliases: list[str] = field(default_factory=list)


@dataclass
class VersionSpec:
    """What a client says about a version it registers; the artifact comes as bytes or from `artifact_uri`."""

    model_name: str
    kind: int  # flywheel.events.v1.ModelKind
    semver: str = ""
    framework: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: common_pb2.Lineage = field(default_factory=common_pb2.Lineage)
    expected_sha256: str = ""
    artifact_uri: str = ""
    filename: str = ""


@dataclass(frozen=True)
class VersionQuery:
    """One page of a model's versions, newest first, filtered."""

    model_name: str
    page_size: int = 0
    page_token: str = ""
    # Only versions carrying all of these tags with these values.
    tags: dict[str, str] = field(default_factory=dict)
    kind: int = 0  # 0 = every kind
    created_after: datetime | None = None


@dataclass(frozen=True)
class Model:
    """A registered model: its latest version number, its aliases (alias -> version) and its policy."""

    name: str
    latest_version: int
    promotion_mode: int
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationRecord:
    """An evaluations.completed event the registry received, and what it decided."""

    evaluation_id: str
    candidate_version: int
    baseline_version: int
    verdict: int  # flywheel.events.v1.EvaluationVerdict
    report_uri: str
    # promoted, manual_policy, failed, stale_baseline, already_champion.
    decision: str
    received_at: datetime


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias (version 0: it was deleted)."""

    alias: str
    previous_version: int
    version: int
    reason: int  # flywheel.events.v1.PromotionReason
    actor: str
    evaluation_id: str
    changed_at: datetime


@dataclass
class VersionHistory:
    """The audit chain of a version: the version (its lineage says what caused it), the evaluations
    about it and every alias move to or from it, oldest first."""

    model_version: ModelVersion
    evaluations: list[EvaluationRecord] = field(default_factory=list)
    alias_changes: list[AliasChange] = field(default_factory=list)


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


def ref(r: VersionRef) -> VersionRef:
    """Check a version reference: a model name and exactly one of version / alias."""
    model_name(r.model_name, "ref.model_name")
    if r.version is None and r.alias is None:
        raise InvalidArgument(f"ref for model {r.model_name!r} names neither a version nor an alias")
    if r.version is not None:
        version_number(r.version, "ref.version")
    else:
        alias(r.alias or "")
    return r


def parse_ref(text: str) -> VersionRef:
    """Parse the CLI's `name:version`, `name@alias` or `name` (= name@champion)."""
    if "@" in text:
        name, _, a = text.partition("@")
        return ref(VersionRef(name, alias=a))
    if ":" in text:
        name, _, v = text.partition(":")
        if not v.isdigit():
            raise InvalidArgument(f"version {v!r} in {text!r} is not a number")
        return ref(VersionRef(name, version=int(v)))
    return ref(VersionRef(text, alias=CHAMPION))
