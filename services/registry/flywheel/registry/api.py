"""gRPC front door of the registry: converts messages and calls the use-case layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from flywheel.common import auth
from flywheel.common.errors import InvalidArgument
from flywheel.common.rpc import map_errors
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry import convert
from flywheel.registry.registry import Registry

DOWNLOAD_CHUNK = 1 << 20

# Who may call what: reading is open to readers, operators and services; registering versions and
# recording metrics/lineage is what the trainer and fine-tuner (services) do; moving aliases and
# policies is an operator's decision (automatic promotion happens inside the registry).
ROLES: dict[str, auth.Roles] = {
    "RegisterModelVersion": auth.WRITE, "RecordMetrics": auth.WRITE, "RecordLineage": auth.WRITE,
    "GetModelVersion": auth.READ, "ListModelVersions": auth.READ, "ListModels": auth.READ,
    "DownloadArtifact": auth.READ, "GetPromotionPolicy": auth.READ, "GetLineage": auth.READ,
    "SetAlias": auth.OPERATE, "DeleteAlias": auth.OPERATE, "RollbackChampion": auth.OPERATE,
    "SetPromotionPolicy": auth.OPERATE,
}


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @map_errors
    async def RegisterModelVersion(self, request_iterator: AsyncIterator[pb.RegisterModelVersionRequest],
                                   context: grpc.aio.ServicerContext) -> pb.RegisterModelVersionResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "spec":
            raise InvalidArgument("the first message of RegisterModelVersion must carry the spec")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first message may carry a spec; later ones carry chunks")
                yield message.chunk

        version = await self.registry.register(convert.version_spec(first.spec), chunks())
        return pb.RegisterModelVersionResponse(model_version=convert.model_version_pb(version))

    @map_errors
    async def GetModelVersion(self, request: pb.GetModelVersionRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetModelVersionResponse:
        version = await self.registry.get(convert.version_ref(request.ref))
        return pb.GetModelVersionResponse(model_version=convert.model_version_pb(version))

    @map_errors
    async def ListModelVersions(self, request: pb.ListModelVersionsRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListModelVersionsResponse:
        versions, token = await self.registry.list_versions(convert.version_query(request))
        return pb.ListModelVersionsResponse(model_versions=[convert.model_version_pb(v) for v in versions],
                                            next_page_token=token)

    @map_errors
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        models, token = await self.registry.list_models(request.page_size, request.page_token)
        return pb.ListModelsResponse(models=[convert.model_pb(m) for m in models], next_page_token=token)

    @map_errors
    async def SetAlias(self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext) -> pb.SetAliasResponse:
        previous, version = await self.registry.set_alias(request.model_name, request.alias, request.version,
                                                          auth.principal_name())
        return pb.SetAliasResponse(previous_version=previous, model_version=convert.model_version_pb(version))

    @map_errors
    async def DeleteAlias(self, request: pb.DeleteAliasRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteAliasResponse:
        previous = await self.registry.delete_alias(request.model_name, request.alias, auth.principal_name())
        return pb.DeleteAliasResponse(previous_version=previous)

    @map_errors
    async def RollbackChampion(self, request: pb.RollbackChampionRequest,
                               context: grpc.aio.ServicerContext) -> pb.RollbackChampionResponse:
        champion, previous = await self.registry.rollback_champion(request.model_name, auth.principal_name())
        return pb.RollbackChampionResponse(champion=convert.model_version_pb(champion), previous_version=previous)

    @map_errors
    async def RecordMetrics(self, request: pb.RecordMetricsRequest,
                            context: grpc.aio.ServicerContext) -> pb.RecordMetricsResponse:
        version = await self.registry.record_metrics(convert.version_ref(request.ref), dict(request.metrics))
        return pb.RecordMetricsResponse(model_version=convert.model_version_pb(version))

    @map_errors
    async def RecordLineage(self, request: pb.RecordLineageRequest,
                            context: grpc.aio.ServicerContext) -> pb.RecordLineageResponse:
        version = await self.registry.record_lineage(convert.version_ref(request.ref), request.lineage)
        return pb.RecordLineageResponse(model_version=convert.model_version_pb(version))

    @map_errors
    async def DownloadArtifact(self, request: pb.DownloadArtifactRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DownloadArtifactResponse]:
        version, chunks = await self.registry.open_artifact(convert.version_ref(request.ref))
        yield pb.DownloadArtifactResponse(model_version=convert.model_version_pb(version))
        async for chunk in chunks:
            for start in range(0, len(chunk), DOWNLOAD_CHUNK):
                yield pb.DownloadArtifactResponse(chunk=chunk[start:start + DOWNLOAD_CHUNK])

    @map_errors
    async def SetPromotionPolicy(self, request: pb.SetPromotionPolicyRequest,
                                 context: grpc.aio.ServicerContext) -> pb.SetPromotionPolicyResponse:
        mode = await self.registry.set_promotion_mode(request.model_name, request.mode)
        return pb.SetPromotionPolicyResponse(mode=mode)  # type: ignore[arg-type]

    @map_errors
    async def GetPromotionPolicy(self, request: pb.GetPromotionPolicyRequest,
                                 context: grpc.aio.ServicerContext) -> pb.GetPromotionPolicyResponse:
        return pb.GetPromotionPolicyResponse(mode=await self.registry.get_promotion_mode(request.model_name))  # type: ignore[arg-type]

    @map_errors
    async def GetLineage(self, request: pb.GetLineageRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetLineageResponse:
        return convert.lineage_response(await self.registry.lineage(convert.version_ref(request.ref)))
