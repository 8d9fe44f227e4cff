"""gRPC front door of the feature store: converts messages and calls the use-case layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.featurestore import convert
from flywheel.featurestore.features import Features
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as pb_grpc

# Who may call what: reading features is open to readers, operators and services (trainer,
# evaluator, inference); pushing features is a service's or an operator's write; materialization
# rewrites the online store, an operator's decision.
ROLES: dict[str, auth.Roles] = {
    "GetOnlineFeatures": auth.READ, "GetHistoricalFeatures": auth.READ, "ListFeatureViews": auth.READ,
    "PushFeatures": auth.WRITE, "Materialize": auth.OPERATE,
}


class FeatureStoreServicer(pb_grpc.FeatureStoreServiceServicer):
    def __init__(self, features: Features) -> None:
        self.features = features

    @map_errors
    async def GetOnlineFeatures(self, request: pb.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetOnlineFeaturesResponse:
        return await self.features.online(convert.selection(request.features),
                                          [row.keys for row in request.entity_rows])

    @map_errors
    async def GetHistoricalFeatures(self, request: pb.GetHistoricalFeaturesRequest, context: grpc.aio.ServicerContext
                                    ) -> AsyncIterator[pb.GetHistoricalFeaturesResponse]:
        async for page in self.features.historical(convert.selection(request.features), request.entity_rows,
                                                   request.page_size):
            yield page

    @map_errors
    async def PushFeatures(self, request: pb.PushFeaturesRequest,
                           context: grpc.aio.ServicerContext) -> pb.PushFeaturesResponse:
        written = await self.features.push(request.push_source, request.rows)
        return pb.PushFeaturesResponse(rows_written=written)

    @map_errors
    async def Materialize(self, request: pb.MaterializeRequest,
                          context: grpc.aio.ServicerContext) -> pb.MaterializeResponse:
        views = await self.features.materialize(
            convert.to_datetime(request.start_time) if request.HasField("start_time") else None,
            convert.to_datetime(request.end_time) if request.HasField("end_time") else None,
            list(request.feature_views))
        return pb.MaterializeResponse(feature_views=views)

    @map_errors
    async def ListFeatureViews(self, request: pb.ListFeatureViewsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListFeatureViewsResponse:
        return self.features.list_views()
