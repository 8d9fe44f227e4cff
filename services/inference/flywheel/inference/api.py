"""The OIP v2 gRPC front door (inference.GRPCInferenceService): converts and delegates to the data plane."""

from __future__ import annotations

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.inference.convert import (
    config_to_grpc,
    index_to_grpc,
    metadata_to_grpc,
    request_from_grpc,
    response_to_grpc,
    stats_to_grpc,
)
from flywheel.inference.dataplane import DataPlane
from flywheel.proto.inference import grpc_service_pb2 as pb
from flywheel.proto.inference import grpc_service_pb2_grpc as pb_grpc

# Who may call what: liveness and readiness are probes (open, like grpc.health.v1); predictions take
# the `predict` role (anonymous callers get it when FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT is on);
# metadata is readable by predictors and by readers, operators and services.
DESCRIBE: auth.Roles = auth.PREDICT | auth.READ
ROLES: dict[str, auth.Roles] = {
    "ServerLive": auth.OPEN, "ServerReady": auth.OPEN, "ModelReady": DESCRIBE, "ServerMetadata": DESCRIBE,
    "ModelMetadata": DESCRIBE, "ModelInfer": auth.PREDICT, "RepositoryIndex": DESCRIBE, "ModelConfig": DESCRIBE,
    "ModelStatistics": DESCRIBE,
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @map_errors
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    @map_errors
    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    @map_errors
    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    @map_errors
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dp.server_metadata())

    @map_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        return metadata_to_grpc(self.dp.model_metadata(request.name, request.version))

    @map_errors
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return response_to_grpc(await self.dp.infer(request_from_grpc(request)))

    # Triton's extensions (model repository index, model configuration, statistics).

    @map_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        return index_to_grpc(self.dp.repository_index(ready=request.ready))

    @map_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        return config_to_grpc(self.dp.model_config(request.name, request.version))

    @map_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        return stats_to_grpc(self.dp.model_statistics(request.name, request.version))
