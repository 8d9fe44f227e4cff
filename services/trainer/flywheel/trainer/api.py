"""gRPC front door of the trainer: converts messages and calls the use-case layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import grpc

from flywheel.common import auth
from flywheel.common.errors import InvalidArgument
from flywheel.common.rpc import map_errors
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from flywheel.trainer.runs import RunRequest
from flywheel.trainer.store import Run
from flywheel.trainer.trainer import Trainer


def run_to_proto(run: Run) -> pb.Run:
    message = pb.Run(
        run_id=run.id, model_name=run.model_name, status=run.status, failure_reason=run.failure_reason,  # type: ignore[arg-type]
        params=run.params, metrics=run.metrics, registered_version=run.registered_version,
        dataset_snapshot_id=run.dataset_snapshot_id, feature_names=run.feature_names, code_version=run.code_version,
        requested_by=run.requested_by,
        reason=run.reason, retrain_request_id=run.retrain_request_id, drift_event_id=run.drift_event_id,  # type: ignore[arg-type]
        train_rows=run.train_rows, validation_rows=run.validation_rows, test_rows=run.test_rows,
        epochs=[pb.EpochMetrics(epoch=int(e["epoch"]), train_loss=e["train_loss"],
                                validation_loss=e["validation_loss"],
                                validation_roc_auc=e["validation_roc_auc"]) for e in run.epochs],
    )
    message.window_start.FromDatetime(run.window_start)
    message.window_end.FromDatetime(run.window_end)
    if run.parent_version:
        message.parent.name, message.parent.version = run.model_name, run.parent_version
    for name, value in (("created_at", run.created_at), ("started_at", run.started_at),
                        ("finished_at", run.finished_at)):
        if value is not None:
            getattr(message, name).FromDatetime(value)
    return message


def run_request(request: pb.StartRunRequest) -> RunRequest:
    if not request.model_name:
        raise InvalidArgument("model_name is empty")
    return RunRequest(
        model_name=request.model_name,
        window_start=request.window_start.ToDatetime(UTC) if request.HasField("window_start") else None,
        window_end=request.window_end.ToDatetime(UTC) if request.HasField("window_end") else None,
        params=dict(request.params), reason=request.reason, requested_by=auth.principal_name())


# Who may call what: starting a run is an operator's decision (the monitor asks through
# retrain.requests instead); reading runs is open to readers, operators and services.
ROLES: dict[str, auth.Roles] = {
    "StartRun": auth.OPERATE, "GetRun": auth.READ, "ListRuns": auth.READ, "WatchRun": auth.READ,
}


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    @map_errors
    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.StartRunResponse:
        run, coalesced = await self.trainer.start_run(run_request(request))
        return pb.StartRunResponse(run=run_to_proto(run), coalesced=coalesced)

    @map_errors
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_to_proto(await self.trainer.get_run(request.run_id)))

    @map_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        runs, token = await self.trainer.list_runs(request.model_name, request.page_size, request.page_token)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    @map_errors
    async def WatchRun(self, request: pb.WatchRunRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchRunResponse]:
        async for run in self.trainer.watch_run(request.run_id):
            yield pb.WatchRunResponse(run=run_to_proto(run), stage=run.stage, progress=run.progress)
