"""gRPC front door of the retriever: converts messages and calls the use-case layer (retriever.py)."""

from __future__ import annotations

from datetime import UTC

import grpc

from flywheel.common import auth
from flywheel.common.rpc import map_errors
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.proto.retriever.v1 import retriever_service_pb2_grpc as pb_grpc
from flywheel.retriever.domain import Collection, Document, Filter, Hit, RawDocument
from flywheel.retriever.retriever import Retriever, plan_query

# Who may call what: reading and querying is open to readers, operators and services (inference retrieves
# for its applications), and to `predict` tokens for Retrieve, the data plane of RAG applications; changing
# collections and documents takes a writer (service or operator).
ROLES: dict[str, auth.Roles] = {
    "CreateCollection": auth.WRITE, "ListCollections": auth.READ, "IngestDocuments": auth.WRITE,
    "Retrieve": auth.READ | auth.PREDICT, "GetDocument": auth.READ, "ListDocuments": auth.READ,
    "DeleteDocument": auth.WRITE,
}


def model_ref(name: str, version: int | None) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, version=version or 0)


def collection_to_proto(c: Collection) -> pb.Collection:
    message = pb.Collection(tenant=c.tenant, name=c.name, description=c.description, document_count=c.document_count,
                            chunk_count=c.active_chunks, embedding_model=model_ref(c.embedding_model, c.active_version),
                            dimensions=c.dimensions or 0, pending_documents_done=c.pending_documents_done)
    if c.pending_version is not None:
        message.pending_embedding_model.CopyFrom(model_ref(c.embedding_model, c.pending_version))
    message.created_at.FromDatetime(c.created_at)
    return message


def hit_to_proto(h: Hit) -> pb.RetrievedChunk:
    return pb.RetrievedChunk(chunk_id=h.chunk_id, document_id=h.document_id, title=h.title, source=h.source,
                             index=h.index, text=h.text, start_offset=h.start_offset, end_offset=h.end_offset,
                             section=h.section, score=h.score, vector_rank=h.vector_rank, text_rank=h.text_rank,
                             similarity=h.similarity, metadata=h.metadata, doc_type=h.doc_type, tags=h.tags)


def document_to_proto(d: Document, collection: str, chunks: list[Hit] | None = None) -> pb.Document:
    message = pb.Document(tenant=d.tenant, collection=collection, document_id=d.document_id, title=d.title,
                          source=d.source, mime_type=d.mime_type, text=d.text, content_sha256=d.content_sha256,
                          revision=d.revision, metadata=d.metadata, doc_type=d.doc_type, tags=d.tags,
                          chunks=[hit_to_proto(h) for h in chunks or []], indexed=d.indexed)
    if d.document_date is not None:
        message.document_date.FromDatetime(d.document_date)
    message.ingested_at.FromDatetime(d.ingested_at)
    return message


def raw_document(d: pb.DocumentInput) -> RawDocument:
    return RawDocument(document_id=d.document_id, title=d.title, source=d.source, mime_type=d.mime_type,
                       content=d.content, metadata=dict(d.metadata), doc_type=d.doc_type, tags=list(d.tags),
                       document_date=d.document_date.ToDatetime(UTC) if d.HasField("document_date") else None)


def filter_of(f: pb.MetadataFilter) -> Filter:
    return Filter(doc_types=tuple(f.doc_types), tags_any=tuple(f.tags_any), tags_all=tuple(f.tags_all),
                  date_from=f.date_from.ToDatetime(UTC) if f.HasField("date_from") else None,
                  date_to=f.date_to.ToDatetime(UTC) if f.HasField("date_to") else None,
                  document_ids=tuple(f.document_ids))


class RetrieverServicer(pb_grpc.RetrieverServiceServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    @map_errors
    async def CreateCollection(self, request: pb.CreateCollectionRequest,
                               context: grpc.aio.ServicerContext) -> pb.CreateCollectionResponse:
        coll, created = await self.retriever.create_collection(request.tenant, request.name, request.description)
        return pb.CreateCollectionResponse(collection=collection_to_proto(coll), created=created)

    @map_errors
    async def ListCollections(self, request: pb.ListCollectionsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListCollectionsResponse:
        collections = await self.retriever.list_collections(request.tenant)
        return pb.ListCollectionsResponse(collections=[collection_to_proto(c) for c in collections])

    @map_errors
    async def IngestDocuments(self, request: pb.IngestDocumentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.IngestDocumentsResponse:
        outcomes = await self.retriever.ingest(request.tenant, request.collection,
                                               [raw_document(d) for d in request.documents])
        return pb.IngestDocumentsResponse(results=[
            pb.IngestResult(document_id=o.document_id, revision=o.revision, content_sha256=o.content_sha256,
                            characters=o.characters,
                            status=pb.INGEST_STATUS_ACCEPTED if o.accepted else pb.INGEST_STATUS_UNCHANGED)
            for o in outcomes])

    @map_errors
    async def Retrieve(self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        which = request.WhichOneof("query")
        query = plan_query(
            tenant=request.tenant, collection=request.collection, text=request.text if which == "text" else "",
            vector=request.vector.values if which == "vector" else None, k=request.k,
            filter=filter_of(request.filter) if request.HasField("filter") else None,
            weights=(request.weights.vector, request.weights.text) if request.HasField("weights") else None,
            rrf_k=request.rrf_k, text_for_keywords=request.text_for_keywords)
        result = await self.retriever.retrieve(query)
        return pb.RetrieveResponse(chunks=[hit_to_proto(h) for h in result.hits],
                                   embedding_model=model_ref(result.model_name, result.model_version))

    @map_errors
    async def GetDocument(self, request: pb.GetDocumentRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetDocumentResponse:
        doc, chunks = await self.retriever.get_document(request.tenant, request.collection, request.document_id,
                                                        request.include_chunks)
        return pb.GetDocumentResponse(document=document_to_proto(doc, request.collection, chunks))

    @map_errors
    async def ListDocuments(self, request: pb.ListDocumentsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListDocumentsResponse:
        docs, token = await self.retriever.list_documents(request.tenant, request.collection, request.page_size,
                                                          request.page_token, request.include_text)
        return pb.ListDocumentsResponse(documents=[document_to_proto(d, request.collection) for d in docs],
                                        next_page_token=token)

    @map_errors
    async def DeleteDocument(self, request: pb.DeleteDocumentRequest,
                             context: grpc.aio.ServicerContext) -> pb.DeleteDocumentResponse:
        deleted, revision = await self.retriever.delete_document(request.tenant, request.collection,
                                                                 request.document_id)
        return pb.DeleteDocumentResponse(deleted=deleted, revision=revision)
