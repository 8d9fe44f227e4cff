"""The registry's database: models, versions, aliases (with their history) and the evaluations it acted
on. Every statement takes the caller's connection, so a use case composes them into one transaction
(with the outbox row of the event it causes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from flywheel.common.artifacts import StoredArtifact
from flywheel.common.errors import AlreadyExists, NotFound
from flywheel.proto.events.v1 import common_pb2
from flywheel.registry.domain import AliasChange, Artifact, EvaluationRecord, Model, ModelVersion, VersionSpec

# A version with the aliases pointing at it now.
VERSION = (
    "SELECT v.*, coalesce(array_agg(a.alias ORDER BY a.alias) FILTER (WHERE a.alias IS NOT NULL), '{}')"
    " AS aliases FROM model_versions v LEFT JOIN aliases a ON a.model_name = v.model_name"
    " AND a.version = v.version WHERE v.model_name = %s AND v.version = %s GROUP BY v.model_name, v.version")


def lineage_json(lineage: common_pb2.Lineage) -> dict[str, Any]:
    """Lineage as stored: JSON with camelCase field names (queryable, e.g. by trainingRunId)."""
    return json_format.MessageToDict(lineage)


def lineage_from_json(data: dict[str, Any]) -> common_pb2.Lineage:
    return json_format.ParseDict(data, common_pb2.Lineage(), ignore_unknown_fields=True)


def model_version(row: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        model_name=row["model_name"], version=row["version"], semver=row["semver"] or "", kind=row["kind"],
        framework=row["framework"], description=row["description"],
        artifact=Artifact(uri=row["artifact_uri"], sha256=row["artifact_sha256"], size_bytes=row["artifact_size"],
                          filename=row["artifact_filename"]),
        created_at=row["created_at"], tags=row["tags"], metrics=row["metrics"],
        lineage=lineage_from_json(row["lineage"]), aliases=list(row["aliases"]))


class RegistryStore:
    """SQL over the registry's schema: rows in, domain types out."""

    # -- models --------------------------------------------------------------------------------

    async def next_version(self, conn: AsyncConnection, name: str) -> int:
        """Create the model if new, and take its next version number."""
        await conn.execute("INSERT INTO models (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))
        row = await (await conn.execute(
            "UPDATE models SET next_version = next_version + 1 WHERE name = %s RETURNING next_version - 1 AS v",
            (name,))).fetchone()
        return row["v"]  # type: ignore[index]

    async def promotion_mode(self, conn: AsyncConnection, name: str, *, lock: bool = False) -> int | None:
        """The model's promotion mode, None if it is not registered; `lock` holds its row until commit."""
        row = await (await conn.execute(
            "SELECT promotion_mode FROM models WHERE name = %s" + (" FOR UPDATE" if lock else ""),
            (name,))).fetchone()
        return None if row is None else row["promotion_mode"]

    async def set_promotion_mode(self, conn: AsyncConnection, name: str, mode: int) -> bool:
        """False when the model is not registered."""
        cur = await conn.execute("UPDATE models SET promotion_mode = %s WHERE name = %s", (mode, name))
        return cur.rowcount > 0

    async def lock_model(self, conn: AsyncConnection, name: str) -> bool:
        """Lock the model's row until commit; False when it is not registered."""
        row = await (await conn.execute("SELECT 1 FROM models WHERE name = %s FOR UPDATE", (name,))).fetchone()
        return row is not None

    async def models(self, conn: AsyncConnection, after: str, limit: int) -> list[Model]:
        """Models named after `after`, by name, with their aliases."""
        rows = await (await conn.execute(
            "SELECT m.name, m.next_version - 1 AS latest, m.promotion_mode,"
            " coalesce(jsonb_object_agg(a.alias, a.version) FILTER (WHERE a.alias IS NOT NULL), '{}') AS aliases"
            " FROM models m LEFT JOIN aliases a ON a.model_name = m.name WHERE m.name > %s"
            " GROUP BY m.name ORDER BY m.name LIMIT %s", (after, limit))).fetchall()
        return [Model(name=r["name"], latest_version=r["latest"], promotion_mode=r["promotion_mode"],
                      aliases=r["aliases"]) for r in rows]

    # -- versions ------------------------------------------------------------------------------

    async def insert_version(self, conn: AsyncConnection, name: str, version: int, spec: VersionSpec,
                             stored: StoredArtifact) -> None:
        try:
            await conn.execute(
                "INSERT INTO model_versions (model_name, version, semver, kind, framework, description,"
                " artifact_uri, artifact_sha256, artifact_size, artifact_filename, tags, metrics, lineage)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (name, version, spec.semver or None, spec.kind, spec.framework, spec.description,
                 stored.uri, stored.sha256, stored.size_bytes, spec.filename, Jsonb(dict(spec.tags)),
                 Jsonb(dict(spec.metrics)), Jsonb(lineage_json(spec.lineage))))
        except UniqueViolation as exc:
            raise AlreadyExists(f"model {name!r} already has a version with semver {spec.semver!r}") from exc

    async def version(self, conn: AsyncConnection, name: str, version: int) -> ModelVersion:
        row = await (await conn.execute(VERSION, (name, version))).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return model_version(row)

    async def version_exists(self, conn: AsyncConnection, name: str, version: int) -> bool:
        row = await (await conn.execute("SELECT 1 FROM model_versions WHERE model_name = %s AND version = %s",
                                        (name, version))).fetchone()
        return row is not None

    async def version_numbers(self, conn: AsyncConnection, name: str, *, before: int | None, tags: dict[str, str],
                              kind: int, created_after: datetime | None, limit: int) -> list[int]:
        """Version numbers of a model, newest first, below `before` and matching every filter given."""
        where = ["model_name = %s"]
        params: list[Any] = [name]
        if before is not None:
            where.append("version < %s")
            params.append(before)
        if tags:
            where.append("tags @> %s")
            params.append(Jsonb(dict(tags)))
        if kind:
            where.append("kind = %s")
            params.append(kind)
        if created_after is not None:
            where.append("created_at >= %s")
            params.append(created_after)
        rows = await (await conn.execute(
            f"SELECT version FROM model_versions WHERE {' AND '.join(where)} ORDER BY version DESC LIMIT %s",
            (*params, limit))).fetchall()
        return [r["version"] for r in rows]

    async def add_metrics(self, conn: AsyncConnection, name: str, version: int, metrics: dict[str, float]) -> None:
        """Add or overwrite metrics of a version."""
        await conn.execute(
            "UPDATE model_versions SET metrics = metrics || %s WHERE model_name = %s AND version = %s",
            (Jsonb(metrics), name, version))

    async def lineage(self, conn: AsyncConnection, name: str, version: int, *, lock: bool = False,
                      ) -> common_pb2.Lineage:
        """A version's lineage; `lock` holds its row until commit (read-modify-write)."""
        row = await (await conn.execute(
            "SELECT lineage FROM model_versions WHERE model_name = %s AND version = %s"
            + (" FOR UPDATE" if lock else ""), (name, version))).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return lineage_from_json(row["lineage"])

    async def set_lineage(self, conn: AsyncConnection, name: str, version: int, lineage: common_pb2.Lineage) -> None:
        await conn.execute("UPDATE model_versions SET lineage = %s WHERE model_name = %s AND version = %s",
                           (Jsonb(lineage_json(lineage)), name, version))

    # -- aliases -------------------------------------------------------------------------------

    async def alias_version(self, conn: AsyncConnection, name: str, alias: str) -> int:
        """The version `alias` points at, 0 if it does not exist."""
        row = await (await conn.execute("SELECT version FROM aliases WHERE model_name = %s AND alias = %s",
                                        (name, alias))).fetchone()
        return row["version"] if row else 0

    async def point_alias(self, conn: AsyncConnection, name: str, alias: str, version: int) -> None:
        await conn.execute(
            "INSERT INTO aliases (model_name, alias, version) VALUES (%s, %s, %s) ON CONFLICT (model_name, alias)"
            " DO UPDATE SET version = EXCLUDED.version, updated_at = now()", (name, alias, version))

    async def delete_alias(self, conn: AsyncConnection, name: str, alias: str) -> None:
        await conn.execute("DELETE FROM aliases WHERE model_name = %s AND alias = %s", (name, alias))

    async def record_alias_change(self, conn: AsyncConnection, name: str, alias: str, previous: int, version: int,
                                  reason: int, actor: str, evaluation_id: str) -> None:
        await conn.execute(
            "INSERT INTO alias_history (model_name, alias, previous_version, version, reason, actor, evaluation_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)", (name, alias, previous, version, reason, actor, evaluation_id))

    async def alias_changes(self, conn: AsyncConnection, name: str, version: int) -> list[AliasChange]:
        """Moves of any alias to or from `version`, oldest first."""
        rows = await (await conn.execute(
            "SELECT * FROM alias_history WHERE model_name = %s AND (version = %s OR previous_version = %s)"
            " ORDER BY id", (name, version, version))).fetchall()
        return [AliasChange(alias=r["alias"], previous_version=r["previous_version"], version=r["version"],
                            reason=r["reason"], actor=r["actor"], evaluation_id=r["evaluation_id"],
                            changed_at=r["changed_at"]) for r in rows]

    # -- evaluations ---------------------------------------------------------------------------

    async def record_evaluation(self, conn: AsyncConnection, evaluation_id: str, name: str, candidate: int,
                                baseline: int, verdict: int, report_uri: str, decision: str) -> None:
        """Keep an evaluation and the decision taken on it, once per evaluation id."""
        await conn.execute(
            "INSERT INTO evaluations (evaluation_id, model_name, candidate_version, baseline_version, verdict,"
            " report_uri, decision) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (evaluation_id) DO NOTHING",
            (evaluation_id, name, candidate, baseline, verdict, report_uri, decision))

    async def evaluations(self, conn: AsyncConnection, name: str, candidate: int) -> list[EvaluationRecord]:
        """Evaluations with `candidate` as the candidate, oldest first."""
        rows = await (await conn.execute(
            "SELECT * FROM evaluations WHERE model_name = %s AND candidate_version = %s"
            " ORDER BY received_at, evaluation_id", (name, candidate))).fetchall()
        return [EvaluationRecord(evaluation_id=r["evaluation_id"], candidate_version=r["candidate_version"],
                                 baseline_version=r["baseline_version"], verdict=r["verdict"],
                                 report_uri=r["report_uri"], decision=r["decision"], received_at=r["received_at"])
                for r in rows]
