"""gRPC front door of the fine-tuner: converts messages and calls the use-case layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.finetuner.finetuner import Finetuner
from flywheel.finetuner.runs import DatasetView, RunRequest
from flywheel.finetuner.store import Run
from flywheel.proto.events.v1 import common_pb2, models_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc


def run_to_proto(run: Run) -> pb.Run:
    message = pb.Run(
        run_id=run.id, application=run.application, model_name=run.model_name, status=run.status,  # type: ignore[arg-type]
        failure_reason=run.failure_reason, settings=run.settings, metrics=run.metrics,
        epochs=[pb.EpochMetrics(epoch=int(e["epoch"]), train_loss=e["train_loss"], eval_loss=e["eval_loss"])
                for e in run.epochs],
        registered_version=run.registered_version, dataset_snapshot_id=run.dataset_snapshot_id,
        train_examples=run.train_examples, eval_examples=run.eval_examples, reviews=run.reviews,
        reason=run.reason, retrain_request_id=run.retrain_request_id, drift_event_id=run.drift_event_id,  # type: ignore[arg-type]
        requested_by=run.requested_by, code_version=run.code_version, step=run.step, total_steps=run.total_steps,
        checkpoint_step=run.checkpoint_step, resumed_from_step=run.resumed_from_step, attempts=run.attempts,
        coalesced_requests=run.coalesced_requests, stage=run.stage, progress=run.progress)
    if run.base_version:
        message.base.CopyFrom(common_pb2.ModelRef(name=run.base_name, version=run.base_version))
    if run.parent_version:
        message.parent.CopyFrom(common_pb2.ModelRef(name=run.model_name, version=run.parent_version))
    for name, value in (("created_at", run.created_at), ("started_at", run.started_at),
                        ("finished_at", run.finished_at)):
        if value is not None:
            getattr(message, name).FromDatetime(value)
    return message


def dataset_to_proto(view: DatasetView) -> pb.Dataset:
    stats = view.stats
    message = pb.Dataset(
        application=stats.application, examples=stats.examples, corrections=stats.corrections,
        approvals=stats.approvals, train_examples=view.train_examples, eval_examples=view.eval_examples,
        duplicates=stats.duplicates, redactions=dict(stats.redactions), pending_decisions=view.pending_decisions,
        rejected=stats.rejected, snapshot_id=view.snapshot_id, new_corrections=view.new_corrections,
        correction_threshold=view.threshold, review_ids=view.review_ids, reviews=view.reviews)
    if view.last_run is not None:
        message.last_run_id = view.last_run.id
        message.last_snapshot_id = view.last_run.dataset_snapshot_id
    times: tuple[tuple[str, datetime | None], ...] = (("first_example_at", stats.first_at),
                                                       ("last_example_at", stats.last_at))
    for name, value in times:
        if value is not None:
            getattr(message, name).FromDatetime(value)
    return message


def run_request(request: pb.StartRunRequest) -> RunRequest:
    return RunRequest(application=request.application.strip(), settings=dict(request.settings),
                      reason=request.reason or models_pb2.RETRAIN_REASON_MANUAL, requested_by=auth.principal_name())


# Who may call what: starting a run is an operator's decision (the monitor asks through retrain.requests, the
# correction threshold starts runs by itself); reading runs and datasets is open to readers, operators and
# services. Reviewers see examples through the review app, not here.
ROLES: dict[str, auth.Roles] = {
    "StartRun": auth.OPERATE, "GetRun": auth.READ, "ListRuns": auth.READ, "WatchRun": auth.READ,
    "GetDataset": auth.READ,
}


class FinetunerServicer(pb_grpc.FinetunerServiceServicer):
    def __init__(self, finetuner: Finetuner) -> None:
        self.finetuner = finetuner

    @map_errors
    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.StartRunResponse:
        run, coalesced = await self.finetuner.start_run(run_request(request))
        return pb.StartRunResponse(run=run_to_proto(run), coalesced=coalesced)

    @map_errors
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_to_proto(await self.finetuner.get_run(request.run_id)))

    @map_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        runs, token = await self.finetuner.list_runs(request.application, request.page_size, request.page_token)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    @map_errors
    async def WatchRun(self, request: pb.WatchRunRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchRunResponse]:
        async for run in self.finetuner.watch_run(request.run_id):
            yield pb.WatchRunResponse(run=run_to_proto(run), stage=run.stage, progress=run.progress)

    @map_errors
    async def GetDataset(self, request: pb.GetDatasetRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetDatasetResponse:
        view = await self.finetuner.describe_dataset(request.application.strip(), request.snapshot_id.strip())
        return pb.GetDatasetResponse(dataset=dataset_to_proto(view))
