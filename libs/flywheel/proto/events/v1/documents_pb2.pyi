import datetime

from flywheel.proto.events.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DocumentIngested(_message.Message):
    __slots__ = ("document_id", "collection", "title", "text", "text_uri", "mime_type", "content_sha256", "metadata", "ingested_at", "tenant", "source", "revision", "doc_type", "tags", "document_date", "embed_with")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_URI_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DOC_TYPE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_DATE_FIELD_NUMBER: _ClassVar[int]
    EMBED_WITH_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    collection: str
    title: str
    text: str
    text_uri: str
    mime_type: str
    content_sha256: str
    metadata: _containers.ScalarMap[str, str]
    ingested_at: _timestamp_pb2.Timestamp
    tenant: str
    source: str
    revision: int
    doc_type: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    document_date: _timestamp_pb2.Timestamp
    embed_with: _common_pb2.ModelRef
    def __init__(self, document_id: _Optional[str] = ..., collection: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., text_uri: _Optional[str] = ..., mime_type: _Optional[str] = ..., content_sha256: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., source: _Optional[str] = ..., revision: _Optional[int] = ..., doc_type: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., document_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., embed_with: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("chunk_id", "index", "text", "start_offset", "end_offset", "vector", "token_count", "section")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    index: int
    text: str
    start_offset: int
    end_offset: int
    vector: _containers.RepeatedScalarFieldContainer[float]
    token_count: int
    section: str
    def __init__(self, chunk_id: _Optional[str] = ..., index: _Optional[int] = ..., text: _Optional[str] = ..., start_offset: _Optional[int] = ..., end_offset: _Optional[int] = ..., vector: _Optional[_Iterable[float]] = ..., token_count: _Optional[int] = ..., section: _Optional[str] = ...) -> None: ...

class DocumentEmbedded(_message.Message):
    __slots__ = ("document_id", "collection", "title", "embedding_model", "dimensions", "chunks", "metadata", "embedded_at", "tenant", "source", "revision", "content_sha256", "doc_type", "tags", "document_date", "normalized")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DOC_TYPE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_DATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    collection: str
    title: str
    embedding_model: _common_pb2.ModelRef
    dimensions: int
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    metadata: _containers.ScalarMap[str, str]
    embedded_at: _timestamp_pb2.Timestamp
    tenant: str
    source: str
    revision: int
    content_sha256: str
    doc_type: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    document_date: _timestamp_pb2.Timestamp
    normalized: bool
    def __init__(self, document_id: _Optional[str] = ..., collection: _Optional[str] = ..., title: _Optional[str] = ..., embedding_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dimensions: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., embedded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., source: _Optional[str] = ..., revision: _Optional[int] = ..., content_sha256: _Optional[str] = ..., doc_type: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., document_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., normalized: _Optional[bool] = ...) -> None: ...
