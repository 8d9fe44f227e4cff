"""gRPC front door of the evaluator: converts messages and calls the use-case layer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc

from flywheel.common import auth
from flywheel.common.errors import FailedPrecondition
from flywheel.common.rpc import map_errors
from flywheel.evaluator.evaluator import REPORT_PREFIX, EvaluationRequest, Evaluator
from flywheel.evaluator.llm_evaluation import LlmEvaluations
from flywheel.evaluator.store import EvaluationRow, GoldenSetRow
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import models_pb2


def _bins(values: list[dict[str, Any]]) -> list[pb.CalibrationBin]:
    return [pb.CalibrationBin(lower=b["lower"], upper=b["upper"], rows=b["rows"], mean_predicted=b["mean_predicted"],
                              observed_rate=b["observed_rate"]) for b in values]


def _questions(report: dict[str, Any]) -> list[pb.QuestionResult]:
    return [pb.QuestionResult(
        item_id=q["item_id"], kind=q["kind"], question=q["question"], reference=q["reference"],
        candidate_answer=q["candidate_answer"], baseline_answer=q["baseline_answer"],
        candidate_scores=q["candidate_scores"], baseline_scores=q["baseline_scores"], failing=q["failing"],
        reason=q["reason"]) for q in report.get("questions", [])]


def golden_set_to_proto(row: GoldenSetRow, *, with_yaml: bool = True) -> pb.GoldenSet:
    message = pb.GoldenSet(application=row.application, version=row.version, description=row.description,
                           content_sha256=row.content_sha256, yaml=row.yaml if with_yaml else "",
                           answerable_items=row.answerable_items, refusal_items=row.refusal_items,
                           created_by=row.created_by)
    message.created_at.FromDatetime(row.created_at)
    return message


def evaluation_to_proto(row: EvaluationRow) -> pb.Evaluation:
    report = row.report or {}
    golden = report.get("golden_set") or {}
    message = pb.Evaluation(
        evaluation_id=row.id, model_name=row.model_name, candidate_version=row.candidate_version,
        baseline_version=row.baseline_version, verdict=row.verdict,  # type: ignore[arg-type]
        candidate_metrics=row.candidate_metrics, baseline_metrics=row.baseline_metrics,
        checks=[models_pb2.GateCheck(**c) for c in row.checks], rows=row.rows, error=row.error,
        report_uri=REPORT_PREFIX + row.id if row.completed_at else "", requested_by=row.requested_by,
        slices=[pb.SliceMetrics(feature=s["feature"], value=s["value"], rows=s["rows"], candidate=s["candidate"],
                                baseline=s["baseline"]) for s in report.get("slices", [])],
        candidate_calibration=_bins(report.get("candidate_calibration", [])),
        baseline_calibration=_bins(report.get("baseline_calibration", [])),
        golden_set=golden.get("application", ""), golden_set_version=golden.get("version", 0),
        questions=_questions(report), candidate_kind=report.get("candidate_kind", ""))
    times: tuple[tuple[str, datetime | None], ...] = (
        ("data_start", row.data_start), ("data_end", row.data_end), ("started_at", row.started_at),
        ("completed_at", row.completed_at))
    for name, value in times:
        if value is not None:
            getattr(message, name).FromDatetime(value)
    return message


# Who may call what: an on-demand evaluation is an operator's decision (automatic ones follow
# models.registered); reading evaluations is open to readers, operators and services.
ROLES: dict[str, auth.Roles] = {
    "Evaluate": auth.OPERATE, "GetEvaluation": auth.READ, "ListEvaluations": auth.READ,
    # A golden set decides what may be promoted: pushing one takes WRITE (services and operators).
    "PutGoldenSet": auth.WRITE, "GetGoldenSet": auth.READ, "ListGoldenSets": auth.READ,
}


class EvaluatorServicer(pb_grpc.EvaluatorServiceServicer):
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    @property
    def llm(self) -> LlmEvaluations:
        if self.evaluator.llm is None:
            raise FailedPrecondition("LLM evaluation is off in this evaluator (FLYWHEEL_EVALUATOR_LLM=false)")
        return self.evaluator.llm

    @map_errors
    async def Evaluate(self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext) -> pb.EvaluateResponse:
        row = await self.evaluator.evaluate_now(EvaluationRequest(
            request.model_name, request.candidate_version, request.baseline_version, auth.principal_name()))
        return pb.EvaluateResponse(evaluation=evaluation_to_proto(row))

    @map_errors
    async def GetEvaluation(self, request: pb.GetEvaluationRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetEvaluationResponse:
        return pb.GetEvaluationResponse(evaluation=evaluation_to_proto(await self.evaluator.get(request.evaluation_id)))

    @map_errors
    async def ListEvaluations(self, request: pb.ListEvaluationsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListEvaluationsResponse:
        rows, token = await self.evaluator.list(request.model_name, request.page_size, request.page_token)
        return pb.ListEvaluationsResponse(evaluations=[evaluation_to_proto(r) for r in rows], next_page_token=token)

    @map_errors
    async def PutGoldenSet(self, request: pb.PutGoldenSetRequest,
                           context: grpc.aio.ServicerContext) -> pb.PutGoldenSetResponse:
        row, created = await self.llm.put_golden_set(request.yaml, auth.principal_name())
        return pb.PutGoldenSetResponse(golden_set=golden_set_to_proto(row), created=created)

    @map_errors
    async def GetGoldenSet(self, request: pb.GetGoldenSetRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetGoldenSetResponse:
        row = await self.llm.get_golden_set(request.application, request.version)
        return pb.GetGoldenSetResponse(golden_set=golden_set_to_proto(row))

    @map_errors
    async def ListGoldenSets(self, request: pb.ListGoldenSetsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListGoldenSetsResponse:
        rows = await self.llm.list_golden_sets(request.application)
        return pb.ListGoldenSetsResponse(golden_sets=[golden_set_to_proto(r, with_yaml=False) for r in rows])
