"""The registry's use cases, free of any transport: gRPC, the CLI and the event
handlers all come through here. Every state change and the event it causes are
written in one transaction (transactional outbox).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from flywheel.common.artifacts import ArtifactStore, StoredArtifact
from flywheel.common.db import Database
from flywheel.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PoisonEvent
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue
from flywheel.common.topics import MODELS_PROMOTED, MODELS_REGISTERED
from flywheel.proto.events.v1 import common_pb2, models_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.registry import domain

log = logging.getLogger(__name__)

SOURCE = "flywheel/registry"
MAX_PAGE = 1000
DEFAULT_PAGE = 50
Reason = models_pb2.PromotionReason


def _lineage_json(lineage: common_pb2.Lineage) -> dict[str, Any]:
    return json_format.MessageToDict(lineage)


def _lineage(data: dict[str, Any]) -> common_pb2.Lineage:
    return json_format.ParseDict(data, common_pb2.Lineage(), ignore_unknown_fields=True)


def _page_token(version: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": version}).encode()).decode()


def _parse_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        before = json.loads(base64.urlsafe_b64decode(token.encode()))["before"]
        return int(before)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"page_token {token!r} is not a token this registry issued") from exc


def _page_size(size: int) -> int:
    if size < 0:
        raise InvalidArgument(f"page_size must not be negative, got {size}")
    return min(size or DEFAULT_PAGE, MAX_PAGE)


class Registry:
    """Model versions, aliases and promotion policy over one database schema and artifact store."""

    def __init__(self, db: Database, artifacts: ArtifactStore, *, max_artifact_bytes: int,
                 import_prefixes: tuple[str, ...] = ("s3://",)) -> None:
        self.db = db
        self.artifacts = artifacts
        self.max_artifact_bytes = max_artifact_bytes
        self.import_prefixes = import_prefixes

    # -- registering ---------------------------------------------------------------------------

    async def register(self, spec: pb.ModelVersionSpec, chunks: AsyncIterable[bytes]) -> pb.ModelVersion:
        """Store the artifact (streamed, or copied from spec.artifact_uri), then the version, atomically."""
        name = domain.model_name(spec.model_name)
        domain.semver(spec.semver)
        expected = domain.sha256(spec.expected_sha256) or None
        if spec.kind == common_pb2.MODEL_KIND_UNSPECIFIED:
            raise InvalidArgument("kind is unspecified: say what the model is (MODEL_KIND_PREDICTIVE, ...)")
        if spec.lineage.parent_version < 0:
            raise InvalidArgument(f"lineage.parent_version must not be negative, got {spec.lineage.parent_version}")
        if spec.artifact_uri:
            async for chunk in chunks:
                if chunk:
                    raise InvalidArgument("send either artifact_uri or artifact chunks, not both")
            uri = domain.importable_uri(spec.artifact_uri, self.import_prefixes)
            stored = await self.artifacts.import_uri(uri, expected_sha256=expected, max_bytes=self.max_artifact_bytes)
        else:
            stored = await self.artifacts.put(chunks, expected_sha256=expected, max_bytes=self.max_artifact_bytes)
        # If the transaction below fails, the stored artifact is unreferenced; being
        # content-addressed it does no harm and is reused by the next identical upload.
        return await self._insert_version(name, spec, stored)

    async def _insert_version(self, name: str, spec: pb.ModelVersionSpec, stored: StoredArtifact) -> pb.ModelVersion:
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO models (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))
            row = await (await conn.execute(
                "UPDATE models SET next_version = next_version + 1 WHERE name = %s RETURNING next_version - 1 AS v",
                (name,))).fetchone()
            version = row["v"]  # type: ignore[index]
            parent = spec.lineage.parent_version
            if parent and not await self._version_exists(conn, name, parent):
                raise InvalidArgument(f"lineage.parent_version {parent} of model {name!r} does not exist")
            try:
                await conn.execute(
                    "INSERT INTO model_versions (model_name, version, semver, kind, framework, description,"
                    " artifact_uri, artifact_sha256, artifact_size, artifact_filename, tags, metrics, lineage)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (name, version, spec.semver or None, spec.kind, spec.framework, spec.description,
                     stored.uri, stored.sha256, stored.size_bytes, spec.filename, Jsonb(dict(spec.tags)),
                     Jsonb(dict(spec.metrics)), Jsonb(_lineage_json(spec.lineage))))
            except UniqueViolation as exc:
                raise AlreadyExists(f"model {name!r} already has a version with semver {spec.semver!r}") from exc
            mv = await self._load(conn, name, version)
            registered = models_pb2.ModelRegistered(
                model=common_pb2.ModelRef(name=name, version=version), kind=mv.kind, framework=mv.framework,
                artifact_uri=mv.artifact.uri, artifact_sha256=mv.artifact.sha256,
                artifact_size_bytes=mv.artifact.size_bytes, lineage=mv.lineage, metrics=mv.metrics, tags=mv.tags)
            registered.registered_at.CopyFrom(mv.created_at)
            await enqueue(conn, Event(MODELS_REGISTERED, name, registered, SOURCE))
        log.info("version registered", extra={"model": name, "version": version, "sha256": stored.sha256})
        return mv

    # -- reading -------------------------------------------------------------------------------

    async def get(self, ref: pb.ModelVersionRef) -> pb.ModelVersion:
        domain.ref(ref)
        async with self.db.connection() as conn:
            version = await self._resolve(conn, ref)
            return await self._load(conn, ref.model_name, version)

    async def lineage(self, ref: pb.ModelVersionRef) -> pb.GetLineageResponse:
        """The audit chain of a version: what caused it (drift event, retrain request, run, parent),
        the evaluations received about it and every alias move to or from it, oldest first."""
        domain.ref(ref)
        async with self.db.connection() as conn:
            version = await self._resolve(conn, ref)
            mv = await self._load(conn, ref.model_name, version)
            evaluations = await (await conn.execute(
                "SELECT * FROM evaluations WHERE model_name = %s AND candidate_version = %s"
                " ORDER BY received_at, evaluation_id", (ref.model_name, version))).fetchall()
            changes = await (await conn.execute(
                "SELECT * FROM alias_history WHERE model_name = %s AND (version = %s OR previous_version = %s)"
                " ORDER BY id", (ref.model_name, version, version))).fetchall()
        response = pb.GetLineageResponse(
            model_version=mv, drift_event_id=mv.lineage.drift_event_id,
            retrain_request_id=mv.lineage.retrain_request_id, training_run_id=mv.lineage.training_run_id,
            parent_version=mv.lineage.parent_version)
        for row in evaluations:
            record = response.evaluations.add(
                evaluation_id=row["evaluation_id"], candidate_version=row["candidate_version"],
                baseline_version=row["baseline_version"], verdict=row["verdict"], report_uri=row["report_uri"],
                decision=row["decision"])
            record.received_at.FromDatetime(row["received_at"])
        for row in changes:
            change = response.alias_changes.add(
                alias=row["alias"], previous_version=row["previous_version"], version=row["version"],
                reason=row["reason"], actor=row["actor"], evaluation_id=row["evaluation_id"])
            change.changed_at.FromDatetime(row["changed_at"])
        return response

    async def list_versions(self, request: pb.ListModelVersionsRequest) -> pb.ListModelVersionsResponse:
        name = domain.model_name(request.model_name)
        size = _page_size(request.page_size)
        before = _parse_page_token(request.page_token)
        where = ["model_name = %s"]
        params: list[Any] = [name]
        if before is not None:
            where.append("version < %s")
            params.append(before)
        if request.tags:
            where.append("tags @> %s")
            params.append(Jsonb(dict(request.tags)))
        if request.kind:
            where.append("kind = %s")
            params.append(request.kind)
        if request.HasField("created_after"):
            where.append("created_at >= %s")
            params.append(request.created_after.ToDatetime(UTC))
        async with self.db.connection() as conn:
            await self._require_model(conn, name)
            rows = await (await conn.execute(
                f"SELECT version FROM model_versions WHERE {' AND '.join(where)} ORDER BY version DESC LIMIT %s",
                (*params, size + 1))).fetchall()
            versions = [await self._load(conn, name, r["version"]) for r in rows[:size]]
        token = _page_token(versions[-1].version) if len(rows) > size else ""
        return pb.ListModelVersionsResponse(model_versions=versions, next_page_token=token)

    async def list_models(self, page_size: int, page_token: str) -> pb.ListModelsResponse:
        size = _page_size(page_size)
        after = ""
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode()).decode()
            except ValueError as exc:
                raise InvalidArgument(f"page_token {page_token!r} is not a token this registry issued") from exc
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT name, next_version - 1 AS latest, promotion_mode FROM models WHERE name > %s"
                " ORDER BY name LIMIT %s", (after, size + 1))).fetchall()
            models = []
            for r in rows[:size]:
                aliases = await (await conn.execute(
                    "SELECT alias, version FROM aliases WHERE model_name = %s ORDER BY alias", (r["name"],))).fetchall()
                models.append(pb.Model(name=r["name"], latest_version=r["latest"], promotion_mode=r["promotion_mode"],
                                       aliases={a["alias"]: a["version"] for a in aliases}))
        token = base64.urlsafe_b64encode(models[-1].name.encode()).decode() if len(rows) > size else ""
        return pb.ListModelsResponse(models=models, next_page_token=token)

    async def open_artifact(self, ref: pb.ModelVersionRef) -> tuple[pb.ModelVersion, AsyncIterator[bytes]]:
        mv = await self.get(ref)
        return mv, self.artifacts.open(mv.artifact.uri)

    # -- metrics and lineage -------------------------------------------------------------------

    async def record_metrics(self, ref: pb.ModelVersionRef, metrics: dict[str, float]) -> pb.ModelVersion:
        domain.ref(ref)
        if not metrics:
            raise InvalidArgument("metrics is empty")
        async with self.db.connection() as conn, conn.transaction():
            version = await self._resolve(conn, ref)
            await conn.execute(
                "UPDATE model_versions SET metrics = metrics || %s WHERE model_name = %s AND version = %s",
                (Jsonb(metrics), ref.model_name, version))
            return await self._load(conn, ref.model_name, version)

    async def record_lineage(self, ref: pb.ModelVersionRef, lineage: common_pb2.Lineage) -> pb.ModelVersion:
        domain.ref(ref)
        async with self.db.connection() as conn, conn.transaction():
            version = await self._resolve(conn, ref)
            if lineage.parent_version and not await self._version_exists(conn, ref.model_name, lineage.parent_version):
                raise InvalidArgument(f"lineage.parent_version {lineage.parent_version} of model "
                                      f"{ref.model_name!r} does not exist")
            await self._merge_lineage(conn, ref.model_name, version, lineage)
            return await self._load(conn, ref.model_name, version)

    async def _merge_lineage(self, conn: AsyncConnection, name: str, version: int,
                             lineage: common_pb2.Lineage) -> None:
        row = await (await conn.execute(
            "SELECT lineage FROM model_versions WHERE model_name = %s AND version = %s FOR UPDATE",
            (name, version))).fetchone()
        merged = _lineage(row["lineage"])  # type: ignore[index]
        if lineage.feature_names:  # a feature list replaces the old one rather than growing it
            del merged.feature_names[:]
        merged.MergeFrom(lineage)  # set scalars overwrite, lists append
        refs = list(dict.fromkeys(merged.eval_report_refs))
        del merged.eval_report_refs[:]
        merged.eval_report_refs.extend(refs)
        await conn.execute("UPDATE model_versions SET lineage = %s WHERE model_name = %s AND version = %s",
                           (Jsonb(_lineage_json(merged)), name, version))

    # -- aliases and promotion -----------------------------------------------------------------

    async def set_alias(self, name: str, alias: str, version: int, actor: str = "") -> tuple[int, pb.ModelVersion]:
        domain.model_name(name)
        domain.alias(alias)
        domain.version_number(version)
        async with self.db.connection() as conn, conn.transaction():
            await self._lock_model(conn, name)
            if alias == domain.CHAMPION:
                return await self._promote(conn, name, version, Reason.PROMOTION_REASON_MANUAL, actor), \
                    await self._load(conn, name, version)
            previous = await self._move_alias(conn, name, alias, version, Reason.PROMOTION_REASON_MANUAL, actor)
            return previous, await self._load(conn, name, version)

    async def _promote(self, conn: AsyncConnection, name: str, version: int, reason: int, actor: str,
                       evaluation_id: str = "") -> int:
        """Move champion to `version`, keeping the old champion as `previous` for rollback."""
        champion = await self._alias_version(conn, name, domain.CHAMPION)
        if not await self._version_exists(conn, name, version):
            raise NotFound(f"model {name!r} has no version {version}")
        if champion and champion != version:
            await self._move_alias(conn, name, domain.PREVIOUS, champion, reason, actor, evaluation_id)
        return await self._move_alias(conn, name, domain.CHAMPION, version, reason, actor, evaluation_id)

    async def delete_alias(self, name: str, alias: str, actor: str = "") -> int:
        domain.model_name(name)
        domain.alias(alias)
        async with self.db.connection() as conn, conn.transaction():
            await self._lock_model(conn, name)
            return await self._move_alias(conn, name, alias, 0, Reason.PROMOTION_REASON_MANUAL, actor)

    async def rollback_champion(self, name: str, actor: str = "") -> tuple[pb.ModelVersion, int]:
        domain.model_name(name)
        async with self.db.connection() as conn, conn.transaction():
            await self._lock_model(conn, name)
            champion = await self._alias_version(conn, name, domain.CHAMPION)
            previous = await self._alias_version(conn, name, domain.PREVIOUS)
            if not previous:
                raise FailedPrecondition(f"model {name!r} has no previous champion to roll back to")
            await self._move_alias(conn, name, domain.CHAMPION, previous, Reason.PROMOTION_REASON_ROLLBACK, actor)
            if champion:
                await self._move_alias(conn, name, domain.PREVIOUS, champion, Reason.PROMOTION_REASON_ROLLBACK, actor)
            return await self._load(conn, name, previous), champion

    async def set_promotion_mode(self, name: str, mode: int) -> int:
        domain.model_name(name)
        if mode not in (pb.PROMOTION_MODE_MANUAL, pb.PROMOTION_MODE_AUTOMATIC):
            raise InvalidArgument(f"mode must be PROMOTION_MODE_MANUAL or PROMOTION_MODE_AUTOMATIC, got {mode}")
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute("UPDATE models SET promotion_mode = %s WHERE name = %s", (mode, name))
            if cur.rowcount == 0:
                raise NotFound(f"model {name!r} is not registered")
        return mode

    async def get_promotion_mode(self, name: str) -> int:
        domain.model_name(name)
        async with self.db.connection() as conn:
            return await self._require_model(conn, name)

    async def apply_evaluation(self, conn: AsyncConnection, evaluation: models_pb2.EvaluationCompleted) -> str:
        """Act on an evaluations.completed event inside the consumer's transaction.

        Promotes the candidate to champion (old champion -> previous) when the verdict
        passed, the model's policy is automatic, and the evaluation compared against the
        champion that is serving now (an evaluation against an older champion is stale).
        Returns the decision, which is also recorded.
        """
        name, candidate = evaluation.model_name, evaluation.candidate_version
        if not evaluation.evaluation_id:
            raise PoisonEvent("evaluation_id is empty")
        try:
            domain.model_name(name)
            domain.version_number(candidate, "candidate_version")
        except InvalidArgument as exc:
            raise PoisonEvent(str(exc)) from exc
        row = await (await conn.execute("SELECT promotion_mode FROM models WHERE name = %s FOR UPDATE",
                                        (name,))).fetchone()
        if row is None or not await self._version_exists(conn, name, candidate):
            raise PoisonEvent(f"evaluation {evaluation.evaluation_id} is about {name}:{candidate}, "
                              "which is not registered")
        champion = await self._alias_version(conn, name, domain.CHAMPION)
        if evaluation.verdict != models_pb2.EVALUATION_VERDICT_PASSED:
            decision = "failed"
        elif row["promotion_mode"] != pb.PROMOTION_MODE_AUTOMATIC:
            decision = "manual_policy"
        elif champion == candidate:
            decision = "already_champion"
        elif evaluation.baseline_version != champion:
            decision = "stale_baseline"
        else:
            decision = "promoted"
            await self._promote(conn, name, candidate, Reason.PROMOTION_REASON_EVALUATION, SOURCE,
                                evaluation.evaluation_id)
        ref = evaluation.report_uri or f"evaluation:{evaluation.evaluation_id}"
        await self._merge_lineage(conn, name, candidate, common_pb2.Lineage(eval_report_refs=[ref]))
        await conn.execute(
            "INSERT INTO evaluations (evaluation_id, model_name, candidate_version, baseline_version, verdict,"
            " report_uri, decision) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (evaluation_id) DO NOTHING",
            (evaluation.evaluation_id, name, candidate, evaluation.baseline_version, evaluation.verdict,
             evaluation.report_uri, decision))
        log.info("evaluation applied", extra={"model": name, "candidate": candidate, "champion": champion,
                                              "evaluation_id": evaluation.evaluation_id, "decision": decision})
        return decision

    async def _move_alias(self, conn: AsyncConnection, name: str, alias: str, version: int, reason: int,
                          actor: str, evaluation_id: str = "") -> int:
        """Point `alias` at `version` (0 deletes it); emits models.promoted. The model row must be locked."""
        previous = await self._alias_version(conn, name, alias)
        if version == 0:
            if not previous:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            await conn.execute("DELETE FROM aliases WHERE model_name = %s AND alias = %s", (name, alias))
        else:
            if not await self._version_exists(conn, name, version):
                raise NotFound(f"model {name!r} has no version {version}")
            if previous == version:
                return previous
            await conn.execute(
                "INSERT INTO aliases (model_name, alias, version) VALUES (%s, %s, %s) ON CONFLICT (model_name, alias)"
                " DO UPDATE SET version = EXCLUDED.version, updated_at = now()", (name, alias, version))
        await conn.execute(
            "INSERT INTO alias_history (model_name, alias, previous_version, version, reason, actor, evaluation_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)", (name, alias, previous, version, reason, actor, evaluation_id))
        promoted = models_pb2.ModelPromoted(
            model_name=name, alias=alias, previous_version=previous, version=version, reason=reason,  # type: ignore[arg-type]
            evaluation_id=evaluation_id, actor=actor)
        if version:
            promoted.lineage.CopyFrom((await self._load(conn, name, version)).lineage)
        promoted.promoted_at.FromDatetime(datetime.now(UTC))
        await enqueue(conn, Event(MODELS_PROMOTED, name, promoted, SOURCE))
        log.info("alias moved", extra={"model": name, "alias": alias, "from": previous, "to": version,
                                       "reason": models_pb2.PromotionReason.Name(reason)})  # type: ignore[arg-type]
        return previous

    # -- queries -------------------------------------------------------------------------------

    async def _require_model(self, conn: AsyncConnection, name: str) -> int:
        row = await (await conn.execute("SELECT promotion_mode FROM models WHERE name = %s", (name,))).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} is not registered")
        return row["promotion_mode"]

    async def _lock_model(self, conn: AsyncConnection, name: str) -> None:
        """Serialize alias changes of one model (so concurrent moves can never interleave)."""
        row = await (await conn.execute("SELECT 1 FROM models WHERE name = %s FOR UPDATE", (name,))).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} is not registered")

    async def _version_exists(self, conn: AsyncConnection, name: str, version: int) -> bool:
        row = await (await conn.execute("SELECT 1 FROM model_versions WHERE model_name = %s AND version = %s",
                                        (name, version))).fetchone()
        return row is not None

    async def _alias_version(self, conn: AsyncConnection, name: str, alias: str) -> int:
        row = await (await conn.execute("SELECT version FROM aliases WHERE model_name = %s AND alias = %s",
                                        (name, alias))).fetchone()
        return row["version"] if row else 0

    async def _resolve(self, conn: AsyncConnection, ref: pb.ModelVersionRef) -> int:
        await self._require_model(conn, ref.model_name)
        if ref.WhichOneof("selector") == "alias":
            version = await self._alias_version(conn, ref.model_name, ref.alias)
            if not version:
                raise NotFound(f"model {ref.model_name!r} has no alias {ref.alias!r}")
            return version
        if not await self._version_exists(conn, ref.model_name, ref.version):
            raise NotFound(f"model {ref.model_name!r} has no version {ref.version}")
        return ref.version

    async def _load(self, conn: AsyncConnection, name: str, version: int) -> pb.ModelVersion:
        row = await (await conn.execute(
            "SELECT v.*, coalesce(array_agg(a.alias ORDER BY a.alias) FILTER (WHERE a.alias IS NOT NULL), '{}')"
            " AS aliases FROM model_versions v LEFT JOIN aliases a ON a.model_name = v.model_name"
            " AND a.version = v.version WHERE v.model_name = %s AND v.version = %s GROUP BY v.model_name, v.version",
            (name, version))).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}")
        mv = pb.ModelVersion(
            model_name=row["model_name"], version=row["version"], semver=row["semver"] or "", kind=row["kind"],
            framework=row["framework"], description=row["description"],
            artifact=pb.Artifact(uri=row["artifact_uri"], sha256=row["artifact_sha256"],
                                 size_bytes=row["artifact_size"], filename=row["artifact_filename"]),
            tags=row["tags"], metrics=row["metrics"], lineage=_lineage(row["lineage"]), aliases=row["aliases"])
        mv.created_at.FromDatetime(row["created_at"])
        return mv
