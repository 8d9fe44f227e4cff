"""`EmbedderClient`: texts to vectors through the embedder service (the `TextEmbedder` port)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import Embeddings, TextEmbedder
from flywheel.proto.embedder.v1 import embedder_service_pb2 as pb
from flywheel.proto.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import common_pb2

SERVICE = "embedder"


class EmbedderClient(ServiceClient, TextEmbedder):
    """One channel kept open (a hot path: the retriever embeds every text query); `close` it."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._connection = Connection(address, pb_grpc.EmbedderServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=True)

    async def embed(self, texts: Sequence[str], *, model_name: str = "", model_version: int = 0,
                    normalize: bool | None = None) -> Embeddings:
        request = pb.EmbedRequest(texts=list(texts),
                                  model=common_pb2.ModelRef(name=model_name, version=model_version))
        if normalize is not None:
            request.normalize = normalize
        async with self._connection.stub() as stub:
            try:
                response = await stub.Embed(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return Embeddings(model_name=response.model.name, model_version=response.model.version,
                          dimensions=response.dimensions,
                          vectors=[list(e.values) for e in response.embeddings], normalized=response.normalized,
                          token_counts=[e.token_count for e in response.embeddings],
                          truncated=[e.truncated for e in response.embeddings])

    async def models(self) -> list[pb.EmbeddingModel]:
        """The embedding model versions the embedder has loaded."""
        async with self._connection.stub() as stub:
            try:
                response = await stub.ListEmbeddingModels(pb.ListEmbeddingModelsRequest(), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc
        return list(response.models)
