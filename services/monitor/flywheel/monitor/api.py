"""gRPC MonitorService: a thin layer over MonitorStore (domain errors map to status codes)."""

from __future__ import annotations

import asyncio
import json

import grpc
from google.protobuf import json_format

from flywheel.common import auth
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.common.rpc import map_errors
from flywheel.monitor.analysis import render_html, snapshot_metrics
from flywheel.monitor.llm_store import LlmReadStore
from flywheel.monitor.store import MonitorStore, llm_window_pb
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as pb_grpc

# Who may call what: the monitor's API only reads.
ROLES: dict[str, auth.Roles] = {
    "GetModelStatus": auth.READ, "ListWindows": auth.READ, "GetReport": auth.READ, "ListLlmWindows": auth.READ,
}


class MonitorServicer(pb_grpc.MonitorServiceServicer):
    def __init__(self, store: MonitorStore, llm: LlmReadStore) -> None:
        self.store = store
        self.llm = llm

    @map_errors
    async def GetModelStatus(self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext,
                             ) -> pb.GetModelStatusResponse:
        return await self.store.status(request.model_name, request.recent_windows)

    @map_errors
    async def ListWindows(self, request: pb.ListWindowsRequest, context: grpc.aio.ServicerContext,
                          ) -> pb.ListWindowsResponse:
        windows, token = await self.store.list_windows(request.model_name, request.version, request.page_size,
                                                       request.page_token)
        return pb.ListWindowsResponse(windows=windows, next_page_token=token)

    @map_errors
    async def GetReport(self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext,
                        ) -> pb.GetReportResponse:
        fmt = request.format or pb.REPORT_FORMAT_JSON
        if fmt not in (pb.REPORT_FORMAT_JSON, pb.REPORT_FORMAT_HTML):
            raise InvalidArgument(f"unknown report format {request.format}")
        window, snapshot = await self.store.window(request.window_id)
        if window.state not in (pb.WINDOW_STATE_ANALYZED, pb.WINDOW_STATE_FAILED):
            raise FailedPrecondition(f"window {request.window_id} is not analyzed yet")
        if fmt == pb.REPORT_FORMAT_HTML:
            if snapshot is None:
                raise FailedPrecondition(f"window {request.window_id} has no drift report ({window.error})")
            content = await asyncio.to_thread(render_html, bytes(snapshot))
        else:
            evidently = await asyncio.to_thread(snapshot_metrics, bytes(snapshot)) if snapshot else None
            content = json.dumps({"window": json_format.MessageToDict(window), "evidently": evidently})
        return pb.GetReportResponse(window=window, format=fmt, content=content)

    @map_errors
    async def ListLlmWindows(self, request: pb.ListLlmWindowsRequest, context: grpc.aio.ServicerContext,
                             ) -> pb.ListLlmWindowsResponse:
        rows, token, state = await self.llm.windows(request.application, request.page_size, request.page_token)
        if state is None:
            raise NotFound(f"the monitor has scored no answer of application {request.application!r}")
        response = pb.ListLlmWindowsResponse(windows=[llm_window_pb(r) for r in rows], next_page_token=token)
        response.champion.name, response.champion.version = state["model_name"], state["model_version"]
        if state["last_alert_at"] is not None:
            response.last_alert_at.FromDatetime(state["last_alert_at"])
        return response
