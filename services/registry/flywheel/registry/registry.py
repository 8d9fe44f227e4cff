"""The registry's use cases, free of any transport: gRPC, the CLI and the event handlers all come
through here, with and for the domain types of `domain.py`. Every state change and the event it
causes are written in one transaction (transactional outbox); the SQL is in `store.py`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime

from psycopg import AsyncConnection

from flywheel.common.artifacts import ArtifactStore, StoredArtifact
from flywheel.common.db import Database
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, PoisonEvent
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue
from flywheel.common.topics import MODELS_PROMOTED, MODELS_REGISTERED
from flywheel.proto.events.v1 import common_pb2, models_pb2
from flywheel.registry import domain
from flywheel.registry.domain import (
    Model,
    ModelVersion,
    PromotionMode,
    VersionHistory,
    VersionQuery,
    VersionRef,
    VersionSpec,
)
from flywheel.registry.store import RegistryStore

log = logging.getLogger(__name__)

SOURCE = "flywheel/registry"
MAX_PAGE = 1000
DEFAULT_PAGE = 50
Reason = models_pb2.PromotionReason


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
                 import_prefixes: tuple[str, ...] = ()) -> None:
        self.db = db
        self.store = RegistryStore()
        self.artifacts = artifacts
        self.max_artifact_bytes = max_artifact_bytes
        self.import_prefixes = import_prefixes

    # -- registering ---------------------------------------------------------------------------

    async def register(self, spec: VersionSpec, chunks: AsyncIterable[bytes]) -> ModelVersion:
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

    async def _insert_version(self, name: str, spec: VersionSpec, stored: StoredArtifact) -> ModelVersion:
        async with self.db.connection() as conn, conn.transaction():
            version = await self.store.next_version(conn, name)
            parent = spec.lineage.parent_version
            if parent and not await self.store.version_exists(conn, name, parent):
                raise InvalidArgument(f"lineage.parent_version {parent} of model {name!r} does not exist")
            await self.store.insert_version(conn, name, version, spec, stored)
            mv = await self.store.version(conn, name, version)
            registered = models_pb2.ModelRegistered(
                model=common_pb2.ModelRef(name=name, version=version), kind=mv.kind, framework=mv.framework,  # type: ignore[arg-type]
                artifact_uri=mv.artifact.uri, artifact_sha256=mv.artifact.sha256,
                artifact_size_bytes=mv.artifact.size_bytes, lineage=mv.lineage, metrics=mv.metrics, tags=mv.tags)
            registered.registered_at.FromDatetime(mv.created_at)
            await enqueue(conn, Event(MODELS_REGISTERED, name, registered, SOURCE))
        log.info("version registered", extra={"model": name, "version": version, "sha256": stored.sha256})
        return mv

    # -- reading -------------------------------------------------------------------------------

    async def get(self, ref: VersionRef) -> ModelVersion:
        domain.ref(ref)
        async with self.db.connection() as conn:
            version = await self._resolve(conn, ref)
            return await self.store.version(conn, ref.model_name, version)

    async def lineage(self, ref: VersionRef) -> VersionHistory:
        """The audit chain of a version: what caused it (drift event, retrain request, run, parent),
        the evaluations received about it and every alias move to or from it, oldest first."""
        domain.ref(ref)
        async with self.db.connection() as conn:
            version = await self._resolve(conn, ref)
            return VersionHistory(model_version=await self.store.version(conn, ref.model_name, version),
                                  evaluations=await self.store.evaluations(conn, ref.model_name, version),
                                  alias_changes=await self.store.alias_changes(conn, ref.model_name, version))

    async def list_versions(self, query: VersionQuery) -> tuple[list[ModelVersion], str]:
        """One page of versions, newest first, and the token of the next page ("" at the end)."""
        name = domain.model_name(query.model_name)
        size = _page_size(query.page_size)
        before = _parse_page_token(query.page_token)
        async with self.db.connection() as conn:
            await self._require_model(conn, name)
            numbers = await self.store.version_numbers(conn, name, before=before, tags=query.tags, kind=query.kind,
                                                       created_after=query.created_after, limit=size + 1)
            versions = [await self.store.version(conn, name, v) for v in numbers[:size]]
        token = _page_token(versions[-1].version) if len(numbers) > size else ""
        return versions, token

    async def list_models(self, page_size: int, page_token: str) -> tuple[list[Model], str]:
        """One page of models by name, and the token of the next page ("" at the end)."""
        size = _page_size(page_size)
        after = ""
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode()).decode()
            except ValueError as exc:
                raise InvalidArgument(f"page_token {page_token!r} is not a token this registry issued") from exc
        async with self.db.connection() as conn:
            models = await self.store.models(conn, after, size + 1)
        token = base64.urlsafe_b64encode(models[size - 1].name.encode()).decode() if len(models) > size else ""
        return models[:size], token

    async def open_artifact(self, ref: VersionRef) -> tuple[ModelVersion, AsyncIterator[bytes]]:
        mv = await self.get(ref)
        return mv, self.artifacts.open(mv.artifact.uri)

    # -- metrics and lineage -------------------------------------------------------------------

    async def record_metrics(self, ref: VersionRef, metrics: dict[str, float]) -> ModelVersion:
        domain.ref(ref)
        if not metrics:
            raise InvalidArgument("metrics is empty")
        async with self.db.connection() as conn, conn.transaction():
            version = await self._resolve(conn, ref)
            await self.store.add_metrics(conn, ref.model_name, version, metrics)
            return await self.store.version(conn, ref.model_name, version)

    async def record_lineage(self, ref: VersionRef, lineage: common_pb2.Lineage) -> ModelVersion:
        domain.ref(ref)
        async with self.db.connection() as conn, conn.transaction():
            version = await self._resolve(conn, ref)
            if lineage.parent_version and not await self.store.version_exists(conn, ref.model_name,
                                                                              lineage.parent_version):
                raise InvalidArgument(f"lineage.parent_version {lineage.parent_version} of model "
                                      f"{ref.model_name!r} does not exist")
            await self._merge_lineage(conn, ref.model_name, version, lineage)
            return await self.store.version(conn, ref.model_name, version)

    async def _merge_lineage(self, conn: AsyncConnection, name: str, version: int,
                             lineage: common_pb2.Lineage) -> None:
        merged = await self.store.lineage(conn, name, version, lock=True)
        if lineage.feature_names:  # a feature list replaces the old one rather than growing it
            del merged.feature_names[:]
        merged.MergeFrom(lineage)  # set scalars overwrite, lists append
        refs = list(dict.fromkeys(merged.eval_report_refs))
        del merged.eval_report_refs[:]
        merged.eval_report_refs.extend(refs)
        await self.store.set_lineage(conn, name, version, merged)

    # -- aliases and promotion -----------------------------------------------------------------

    async def set_alias(self, name: str, alias: str, version: int, actor: str = "") -> tuple[int, ModelVersion]:
        domain.model_name(name)
        domain.alias(alias)
        domain.version_number(version)
        async with self.db.connection() as conn, conn.transaction():
            await self._lock_model(conn, name)
            if alias == domain.CHAMPION:
                return await self._promote(conn, name, version, Reason.PROMOTION_REASON_MANUAL, actor), \
                    await self.store.version(conn, name, version)
            previous = await self._move_alias(conn, name, alias, version, Reason.PROMOTION_REASON_MANUAL, actor)
            return previous, await self.store.version(conn, name, version)

    async def _promote(self, conn: AsyncConnection, name: str, version: int, reason: int, actor: str,
                       evaluation_id: str = "") -> int:
        """Move champion to `version`, keeping the old champion as `previous` for rollback."""
        champion = await self.store.alias_version(conn, name, domain.CHAMPION)
        if not await self.store.version_exists(conn, name, version):
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

    async def rollback_champion(self, name: str, actor: str = "") -> tuple[ModelVersion, int]:
        domain.model_name(name)
        async with self.db.connection() as conn, conn.transaction():
            await self._lock_model(conn, name)
            champion = await self.store.alias_version(conn, name, domain.CHAMPION)
            previous = await self.store.alias_version(conn, name, domain.PREVIOUS)
            if not previous:
                raise FailedPrecondition(f"model {name!r} has no previous champion to roll back to")
            await self._move_alias(conn, name, domain.CHAMPION, previous, Reason.PROMOTION_REASON_ROLLBACK, actor)
            if champion:
                await self._move_alias(conn, name, domain.PREVIOUS, champion, Reason.PROMOTION_REASON_ROLLBACK, actor)
            return await self.store.version(conn, name, previous), champion

    async def set_promotion_mode(self, name: str, mode: int) -> PromotionMode:
        domain.model_name(name)
        if mode not in (PromotionMode.MANUAL, PromotionMode.AUTOMATIC):
            raise InvalidArgument(f"mode must be PROMOTION_MODE_MANUAL or PROMOTION_MODE_AUTOMATIC, got {mode}")
        async with self.db.connection() as conn, conn.transaction():
            if not await self.store.set_promotion_mode(conn, name, mode):
                raise NotFound(f"model {name!r} is not registered")
        return PromotionMode(mode)

    async def get_promotion_mode(self, name: str) -> PromotionMode:
        domain.model_name(name)
        async with self.db.connection() as conn:
            return PromotionMode(await self._require_model(conn, name))

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
        mode = await self.store.promotion_mode(conn, name, lock=True)
        if mode is None or not await self.store.version_exists(conn, name, candidate):
            raise PoisonEvent(f"evaluation {evaluation.evaluation_id} is about {name}:{candidate}, "
                              "which is not registered")
        champion = await self.store.alias_version(conn, name, domain.CHAMPION)
        if evaluation.verdict != models_pb2.EVALUATION_VERDICT_PASSED:
            decision = "failed"
        elif mode != PromotionMode.AUTOMATIC:
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
        await self.store.record_evaluation(conn, evaluation.evaluation_id, name, candidate,
                                           evaluation.baseline_version, evaluation.verdict, evaluation.report_uri,
                                           decision)
        log.info("evaluation applied", extra={"model": name, "candidate": candidate, "champion": champion,
                                              "evaluation_id": evaluation.evaluation_id, "decision": decision})
        return decision

    async def _move_alias(self, conn: AsyncConnection, name: str, alias: str, version: int, reason: int,
                          actor: str, evaluation_id: str = "") -> int:
        """Point `alias` at `version` (0 deletes it); emits models.promoted. The model row must be locked."""
        previous = await self.store.alias_version(conn, name, alias)
        if version == 0:
            if not previous:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            await self.store.delete_alias(conn, name, alias)
        else:
            if not await self.store.version_exists(conn, name, version):
                raise NotFound(f"model {name!r} has no version {version}")
            if previous == version:
                return previous
            await self.store.point_alias(conn, name, alias, version)
        await self.store.record_alias_change(conn, name, alias, previous, version, reason, actor, evaluation_id)
        promoted = models_pb2.ModelPromoted(
            model_name=name, alias=alias, previous_version=previous, version=version, reason=reason,  # type: ignore[arg-type]
            evaluation_id=evaluation_id, actor=actor)
        if version:
            promoted.lineage.CopyFrom(await self.store.lineage(conn, name, version))
        promoted.promoted_at.FromDatetime(datetime.now(UTC))
        await enqueue(conn, Event(MODELS_PROMOTED, name, promoted, SOURCE))
        log.info("alias moved", extra={"model": name, "alias": alias, "from": previous, "to": version,
                                       "reason": models_pb2.PromotionReason.Name(reason)})  # type: ignore[arg-type]
        return previous

    # -- checks --------------------------------------------------------------------------------

    async def _require_model(self, conn: AsyncConnection, name: str) -> int:
        mode = await self.store.promotion_mode(conn, name)
        if mode is None:
            raise NotFound(f"model {name!r} is not registered")
        return mode

    async def _lock_model(self, conn: AsyncConnection, name: str) -> None:
        """Serialize alias changes of one model (so concurrent moves can never interleave)."""
        if not await self.store.lock_model(conn, name):
            raise NotFound(f"model {name!r} is not registered")

    async def _resolve(self, conn: AsyncConnection, ref: VersionRef) -> int:
        await self._require_model(conn, ref.model_name)
        if ref.alias is not None:
            version = await self.store.alias_version(conn, ref.model_name, ref.alias)
            if not version:
                raise NotFound(f"model {ref.model_name!r} has no alias {ref.alias!r}")
            return version
        assert ref.version is not None  # domain.ref checked that one of them is set
        if not await self.store.version_exists(conn, ref.model_name, ref.version):
            raise NotFound(f"model {ref.model_name!r} has no version {ref.version}")
        return ref.version
