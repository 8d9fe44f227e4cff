"""flywheel.registry.v1 messages <-> the registry's domain types (`domain.py`), for the gRPC servicer
and the CLI. Lineage is the events' `Lineage` message on both sides and is copied as it is."""

from __future__ import annotations

from datetime import UTC

from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.registry.domain import (
    AliasChange,
    EvaluationRecord,
    Model,
    ModelVersion,
    VersionHistory,
    VersionQuery,
    VersionRef,
    VersionSpec,
)


def version_ref(message: pb.ModelVersionRef) -> VersionRef:
    which = message.WhichOneof("selector")
    return VersionRef(message.model_name, version=message.version if which == "version" else None,
                      alias=message.alias if which == "alias" else None)


def version_spec(message: pb.ModelVersionSpec) -> VersionSpec:
    return VersionSpec(
        model_name=message.model_name, kind=message.kind, semver=message.semver, framework=message.framework,
        description=message.description, tags=dict(message.tags), metrics=dict(message.metrics),
        lineage=message.lineage, expected_sha256=message.expected_sha256, artifact_uri=message.artifact_uri,
        filename=message.filename)


def version_query(message: pb.ListModelVersionsRequest) -> VersionQuery:
    return VersionQuery(
        model_name=message.model_name, page_size=message.page_size, page_token=message.page_token,
        tags=dict(message.tags), kind=message.kind,
        created_after=message.created_after.ToDatetime(UTC) if message.HasField("created_after") else None)


def model_version_pb(mv: ModelVersion) -> pb.ModelVersion:
    message = pb.ModelVersion(
        model_name=mv.model_name, version=mv.version, semver=mv.semver, kind=mv.kind,  # type: ignore[arg-type]
        framework=mv.framework, description=mv.description,
        artifact=pb.Artifact(uri=mv.artifact.uri, sha256=mv.artifact.sha256, size_bytes=mv.artifact.size_bytes,
                             filename=mv.artifact.filename),
        tags=mv.tags, metrics=mv.metrics, lineage=mv.lineage, aliases=mv.aliases)
    message.created_at.FromDatetime(mv.created_at)
    return message


def model_pb(model: Model) -> pb.Model:
    return pb.Model(name=model.name, latest_version=model.latest_version, aliases=model.aliases,
                    promotion_mode=model.promotion_mode)  # type: ignore[arg-type]


def evaluation_pb(record: EvaluationRecord) -> pb.EvaluationRecord:
    message = pb.EvaluationRecord(
        evaluation_id=record.evaluation_id, candidate_version=record.candidate_version,
        baseline_version=record.baseline_version, verdict=record.verdict, report_uri=record.report_uri,  # type: ignore[arg-type]
        decision=record.decision)
    message.received_at.FromDatetime(record.received_at)
    return message


def alias_change_pb(change: AliasChange) -> pb.AliasChange:
    message = pb.AliasChange(
        alias=change.alias, previous_version=change.previous_version, version=change.version,
        reason=change.reason, actor=change.actor, evaluation_id=change.evaluation_id)  # type: ignore[arg-type]
    message.changed_at.FromDatetime(change.changed_at)
    return message


def lineage_response(history: VersionHistory) -> pb.GetLineageResponse:
    """The version, the shortcuts into its lineage (drift event -> retrain request -> run, parent),
    its evaluations and alias moves."""
    lineage = history.model_version.lineage
    return pb.GetLineageResponse(
        model_version=model_version_pb(history.model_version), drift_event_id=lineage.drift_event_id,
        retrain_request_id=lineage.retrain_request_id, training_run_id=lineage.training_run_id,
        parent_version=lineage.parent_version, evaluations=[evaluation_pb(e) for e in history.evaluations],
        alias_changes=[alias_change_pb(c) for c in history.alias_changes])
