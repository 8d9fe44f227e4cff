"""The registry's pure conversions: a database row -> the domain's ModelVersion -> flywheel.registry.v1
messages, lineage through its stored JSON, and requests -> domain types. Each checks every field of
the message, so a field added to the proto and forgotten here fails."""

from __future__ import annotations

from datetime import UTC, datetime

from flywheel.proto.events.v1 import common_pb2, models_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.registry import convert, store
from flywheel.registry.domain import AliasChange, EvaluationRecord, Model, PromotionMode, VersionHistory, VersionRef

CREATED = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
LINEAGE = common_pb2.Lineage(
    parent_version=2, training_run_id="run-7", dataset_snapshot_id="snap", feature_names=["amount", "country"],
    eval_report_refs=["evaluation:e1"], drift_event_id="drift-1", retrain_request_id="retrain-1",
    code_version="abc123", base_model=common_pb2.ModelRef(name="base", version=4))


def version_row() -> dict:
    """A model_versions row as the store's query returns it (with the aliases pointing at it)."""
    return {"model_name": "fraud", "version": 3, "semver": "1.2.0", "kind": common_pb2.MODEL_KIND_PREDICTIVE,
            "framework": "pytorch", "description": "card fraud", "artifact_uri": "file:///a/sha256/ab",
            "artifact_sha256": "ab" * 32, "artifact_size": 1234, "artifact_filename": "fraud.tar.gz",
            "tags": {"run_id": "run-7"}, "metrics": {"roc_auc": 0.93}, "lineage": store.lineage_json(LINEAGE),
            "aliases": ["challenger", "champion"], "created_at": CREATED}


def test_every_field_of_a_version_is_set() -> None:
    mv = convert.model_version_pb(store.model_version(version_row()))
    assert {f.name for f, _ in mv.ListFields()} == {f.name for f in pb.ModelVersion.DESCRIPTOR.fields}


def test_a_stored_version_reaches_the_wire_with_its_lineage_and_aliases() -> None:
    mv = store.model_version(version_row())
    assert mv.lineage == LINEAGE and mv.aliases == ["challenger", "champion"] and mv.semver == "1.2.0"
    expected = pb.ModelVersion(
        model_name="fraud", version=3, semver="1.2.0", kind=common_pb2.MODEL_KIND_PREDICTIVE, framework="pytorch",
        description="card fraud", artifact=pb.Artifact(uri="file:///a/sha256/ab", sha256="ab" * 32, size_bytes=1234,
                                                       filename="fraud.tar.gz"),
        tags={"run_id": "run-7"}, metrics={"roc_auc": 0.93}, lineage=LINEAGE, aliases=["challenger", "champion"])
    expected.created_at.FromDatetime(CREATED)
    assert convert.model_version_pb(mv) == expected
    assert expected.created_at.ToDatetime(UTC) == CREATED


def test_lineage_round_trips_through_its_stored_json() -> None:
    stored = store.lineage_json(LINEAGE)
    assert stored["trainingRunId"] == "run-7"  # camelCase: the index on lineage ->> 'trainingRunId' needs it
    assert store.lineage_from_json(stored) == LINEAGE
    assert store.lineage_from_json({}) == common_pb2.Lineage()
    assert store.lineage_from_json({"someFieldOfTomorrow": 1, "parentVersion": "2"}).parent_version == 2


def test_a_version_without_semver_has_an_empty_one() -> None:
    assert store.model_version({**version_row(), "semver": None, "aliases": []}).semver == ""


def test_a_spec_carries_every_field() -> None:
    message = pb.ModelVersionSpec(
        model_name="fraud", semver="1.0.0", kind=common_pb2.MODEL_KIND_LLM, framework="transformers",
        description="d", tags={"a": "b"}, metrics={"m": 1.5}, lineage=LINEAGE, expected_sha256="cd" * 32,
        artifact_uri="s3://bucket/key", filename="model.bin")
    spec = convert.version_spec(message)
    for field in pb.ModelVersionSpec.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        assert getattr(spec, field.name) == (dict(value) if is_map else value), field.name


def test_refs_keep_which_selector_was_set() -> None:
    assert convert.version_ref(pb.ModelVersionRef(model_name="m", version=3)) == VersionRef("m", version=3)
    by_alias = pb.ModelVersionRef(model_name="m", alias="champion")
    assert convert.version_ref(by_alias) == VersionRef("m", alias="champion")
    assert convert.version_ref(pb.ModelVersionRef(model_name="m")) == VersionRef("m")
    # An explicit 0 is a version (which the rules then refuse), not "no selector".
    assert convert.version_ref(pb.ModelVersionRef(model_name="m", version=0)) == VersionRef("m", version=0)


def test_a_list_request_becomes_a_query() -> None:
    request = pb.ListModelVersionsRequest(model_name="m", page_size=5, page_token="t", tags={"k": "v"},
                                          kind=common_pb2.MODEL_KIND_PREDICTIVE)
    query = convert.version_query(request)
    assert (query.model_name, query.page_size, query.page_token, query.tags, query.kind, query.created_after) == \
        ("m", 5, "t", {"k": "v"}, common_pb2.MODEL_KIND_PREDICTIVE, None)
    request.created_after.FromDatetime(CREATED)
    assert convert.version_query(request).created_after == CREATED


def test_the_lineage_response_has_the_shortcuts_evaluations_and_alias_moves() -> None:
    evaluation = EvaluationRecord(evaluation_id="e1", candidate_version=3, baseline_version=2,
                                  verdict=models_pb2.EVALUATION_VERDICT_PASSED, report_uri="file:///r.json",
                                  decision="promoted", received_at=CREATED)
    move = AliasChange(alias="champion", previous_version=2, version=3,
                       reason=models_pb2.PROMOTION_REASON_EVALUATION, actor="flywheel/registry", evaluation_id="e1",
                       changed_at=CREATED)
    response = convert.lineage_response(VersionHistory(store.model_version(version_row()), [evaluation], [move]))
    assert (response.drift_event_id, response.retrain_request_id, response.training_run_id,
            response.parent_version) == ("drift-1", "retrain-1", "run-7", 2)
    assert response.model_version.lineage == LINEAGE
    (record,) = response.evaluations
    assert {f.name for f, _ in record.ListFields()} == {f.name for f in pb.EvaluationRecord.DESCRIPTOR.fields}
    assert record.decision == "promoted" and record.received_at.ToDatetime(UTC) == CREATED
    (change,) = response.alias_changes
    assert {f.name for f, _ in change.ListFields()} == {f.name for f in pb.AliasChange.DESCRIPTOR.fields}
    assert change.reason == models_pb2.PROMOTION_REASON_EVALUATION and change.changed_at.ToDatetime(UTC) == CREATED


def test_promotion_modes_are_the_protos_numbers() -> None:
    for mode in PromotionMode:
        assert pb.PromotionMode.Value(f"PROMOTION_MODE_{mode.name}") == mode
    assert pb.GetPromotionPolicyResponse(mode=PromotionMode.AUTOMATIC).mode == pb.PROMOTION_MODE_AUTOMATIC
    model = Model(name="m", latest_version=3, promotion_mode=PromotionMode.MANUAL, aliases={"champion": 3})
    assert convert.model_pb(model) == pb.Model(name="m", latest_version=3, aliases={"champion": 3},
                                               promotion_mode=pb.PROMOTION_MODE_MANUAL)
