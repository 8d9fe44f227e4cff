"""`RetrieverClient`: collections, ingestion, retrieval and documents of the retriever service (the
`DocumentRetriever` port), for the CLI, the demo and the services that answer from documents."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc

from flywheel.common import rpc
from flywheel.common.clients.connection import Connection, ServiceClient
from flywheel.common.clients.ports import DocumentRetriever
from flywheel.common.errors import NotFound
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.proto.retriever.v1 import retriever_service_pb2_grpc as pb_grpc

SERVICE = "retriever"
T = TypeVar("T")
# The file types the retriever extracts text from, by extension.
FILE_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".txt": "text/plain", ".html": "text/html",
              ".htm": "text/html", ".pdf": "application/pdf"}


def document_input(content: bytes, *, source: str = "", document_id: str = "", title: str = "", mime_type: str = "",
                   doc_type: str = "", tags: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
                   document_date: datetime | None = None) -> pb.DocumentInput:
    """One document to ingest: its raw bytes (the retriever extracts the text) and what is known about it."""
    message = pb.DocumentInput(document_id=document_id, title=title, source=source, mime_type=mime_type,
                               content=content, doc_type=doc_type, tags=list(tags), metadata=dict(metadata or {}))
    if document_date is not None:
        message.document_date.FromDatetime(document_date)
    return message


def file_input(path: Path, *, source: str = "", **fields: object) -> pb.DocumentInput:
    """A file as a document: its bytes, its path as source (and so as its id), its type from the extension."""
    suffix = path.suffix.lower()
    mime = FILE_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or ""
    return document_input(path.read_bytes(), source=source or str(path), mime_type=mime, **fields)  # type: ignore[arg-type]


def metadata_filter(*, doc_types: Sequence[str] = (), tags_any: Sequence[str] = (), tags_all: Sequence[str] = (),
                    date_from: datetime | None = None, date_to: datetime | None = None,
                    document_ids: Sequence[str] = ()) -> pb.MetadataFilter:
    f = pb.MetadataFilter(doc_types=list(doc_types), tags_any=list(tags_any), tags_all=list(tags_all),
                          document_ids=list(document_ids))
    if date_from is not None:
        f.date_from.FromDatetime(date_from)
    if date_to is not None:
        f.date_to.FromDatetime(date_to)
    return f


class RetrieverClient(ServiceClient, DocumentRetriever):
    """`timeout` bounds each call. `keep_channel` keeps one channel open (a hot path: an application retrieving
    for every request); then `close` it."""

    def __init__(self, address: str, *, auth: rpc.ClientAuth | None = None, timeout: float = 30.0,
                 keep_channel: bool = False) -> None:
        self.address = address
        self.timeout = timeout
        self._connection = Connection(address, pb_grpc.RetrieverServiceStub, auth=auth, default_timeout=timeout,
                                      keep_open=keep_channel)

    async def _call(self, call: Callable[[pb_grpc.RetrieverServiceStub], Awaitable[T]]) -> T:
        async with self._connection.stub() as stub:
            try:
                return await call(stub)
            except grpc.aio.AioRpcError as exc:
                raise rpc.domain_error(SERVICE, self.address, exc) from exc

    async def create_collection(self, name: str, *, tenant: str = "",
                                description: str = "") -> tuple[pb.Collection, bool]:
        """The collection (created now, or existing) and whether it was created."""
        response = await self._call(lambda s: s.CreateCollection(
            pb.CreateCollectionRequest(tenant=tenant, name=name, description=description), timeout=self.timeout))
        return response.collection, response.created

    async def list_collections(self, tenant: str = "") -> list[pb.Collection]:
        response = await self._call(lambda s: s.ListCollections(pb.ListCollectionsRequest(tenant=tenant),
                                                                timeout=self.timeout))
        return list(response.collections)

    async def ingest(self, collection: str, documents: Sequence[pb.DocumentInput], *,
                     tenant: str = "") -> list[pb.IngestResult]:
        """Results in the order of `documents` (ACCEPTED: queued for embedding; UNCHANGED: same text as stored).
        One invalid document fails the call (InvalidArgument naming it) and stores nothing."""
        response = await self._call(lambda s: s.IngestDocuments(
            pb.IngestDocumentsRequest(tenant=tenant, collection=collection, documents=list(documents)),
            timeout=self.timeout))
        return list(response.results)

    async def retrieve(self, collection: str, *, text: str = "", vector: Sequence[float] | None = None, k: int = 0,
                       tenant: str = "", filter: pb.MetadataFilter | None = None,
                       weights: tuple[float, float] | None = None, rrf_k: int = 0,
                       text_for_keywords: str = "") -> pb.RetrieveResponse:
        """The best `k` chunks (0 = 5) for a text query (embedded by the retriever) or a query vector; `weights`
        = (vector, text) of the reciprocal rank fusion."""
        request = pb.RetrieveRequest(tenant=tenant, collection=collection, k=k, rrf_k=rrf_k,
                                     text_for_keywords=text_for_keywords)
        if vector is not None:
            request.vector.values.extend(vector)
        else:
            request.text = text
        if filter is not None:
            request.filter.CopyFrom(filter)
        if weights is not None:
            request.weights.vector, request.weights.text = weights
        return await self._call(lambda s: s.Retrieve(request, timeout=self.timeout))

    async def get_document(self, collection: str, document_id: str, *, tenant: str = "",
                           include_chunks: bool = False) -> pb.Document | None:
        """The document, or None when it does not exist (or was deleted)."""
        try:
            response = await self._call(lambda s: s.GetDocument(pb.GetDocumentRequest(
                tenant=tenant, collection=collection, document_id=document_id, include_chunks=include_chunks),
                timeout=self.timeout))
        except NotFound as exc:
            if "no document" in str(exc):
                return None
            raise
        return response.document

    async def list_documents(self, collection: str, *, tenant: str = "", include_text: bool = False,
                             page_size: int = 0) -> AsyncIterator[pb.Document]:
        """Every live document of the collection, a page at a time."""
        token = ""
        while True:
            request = pb.ListDocumentsRequest(tenant=tenant, collection=collection, page_size=page_size,
                                              page_token=token, include_text=include_text)
            response = await self._call(lambda s, r=request: s.ListDocuments(r, timeout=self.timeout))
            for document in response.documents:
                yield document
            token = response.next_page_token
            if not token:
                return

    async def delete_document(self, collection: str, document_id: str, *, tenant: str = "") -> tuple[bool, int]:
        """(whether there was a document to delete, the revision of the deletion)."""
        response = await self._call(lambda s: s.DeleteDocument(pb.DeleteDocumentRequest(
            tenant=tenant, collection=collection, document_id=document_id), timeout=self.timeout))
        return response.deleted, response.revision
