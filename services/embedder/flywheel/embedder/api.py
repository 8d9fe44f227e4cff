"""gRPC front door of the embedder: converts messages and calls the use cases."""

from __future__ import annotations

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.embedder.catalog import ModelCatalog
from flywheel.embedder.embedding import Embedder
from flywheel.proto.embedder.v1 import embedder_service_pb2 as pb
from flywheel.proto.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import common_pb2

# Who may call what: embedding and listing are reads (the retriever calls with its service token,
# people and tools with a reader token).
ROLES: dict[str, auth.Roles] = {"Embed": auth.READ, "ListEmbeddingModels": auth.READ}


class EmbedderServicer(pb_grpc.EmbedderServiceServicer):
    def __init__(self, embedder: Embedder, catalog: ModelCatalog) -> None:
        self.embedder = embedder
        self.catalog = catalog

    @map_errors
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        result = await self.embedder.embed(
            request.texts, model_name=request.model.name, model_version=int(request.model.version),
            normalize=request.normalize if request.HasField("normalize") else None)
        return pb.EmbedResponse(
            model=common_pb2.ModelRef(name=result.model_name, version=result.model_version),
            dimensions=result.dimensions, normalized=result.normalized,
            embeddings=[pb.Embedding(values=vector.tolist(), token_count=count, truncated=cut,
                                     original_token_count=original)
                        for vector, count, cut, original in zip(result.vectors, result.token_counts,
                                                                result.truncated, result.original_token_counts,
                                                                strict=True)])

    @map_errors
    async def ListEmbeddingModels(self, request: pb.ListEmbeddingModelsRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListEmbeddingModelsResponse:
        return pb.ListEmbeddingModelsResponse(models=[
            pb.EmbeddingModel(model=common_pb2.ModelRef(name=s.name, version=s.version),
                              dimensions=s.model.dimensions, max_tokens=s.model.max_seq_length,
                              champion=self.catalog.is_version_zero(s))
            for s in self.catalog.versions()])
