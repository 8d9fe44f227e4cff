import datetime

from flywheel.proto.events.v1 import common_pb2 as _common_pb2
from flywheel.proto.events.v1 import predictions_pb2 as _predictions_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReviewReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_REASON_UNSPECIFIED: _ClassVar[ReviewReason]
    REVIEW_REASON_LOW_CONFIDENCE: _ClassVar[ReviewReason]
    REVIEW_REASON_DISPUTED: _ClassVar[ReviewReason]
    REVIEW_REASON_GUARD_FLAGGED: _ClassVar[ReviewReason]
    REVIEW_REASON_DRIFT_SAMPLE: _ClassVar[ReviewReason]
    REVIEW_REASON_RANDOM_SAMPLE: _ClassVar[ReviewReason]

class ReviewDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_DECISION_UNSPECIFIED: _ClassVar[ReviewDecision]
    REVIEW_DECISION_APPROVED: _ClassVar[ReviewDecision]
    REVIEW_DECISION_REJECTED: _ClassVar[ReviewDecision]
    REVIEW_DECISION_CORRECTED: _ClassVar[ReviewDecision]
REVIEW_REASON_UNSPECIFIED: ReviewReason
REVIEW_REASON_LOW_CONFIDENCE: ReviewReason
REVIEW_REASON_DISPUTED: ReviewReason
REVIEW_REASON_GUARD_FLAGGED: ReviewReason
REVIEW_REASON_DRIFT_SAMPLE: ReviewReason
REVIEW_REASON_RANDOM_SAMPLE: ReviewReason
REVIEW_DECISION_UNSPECIFIED: ReviewDecision
REVIEW_DECISION_APPROVED: ReviewDecision
REVIEW_DECISION_REJECTED: ReviewDecision
REVIEW_DECISION_CORRECTED: ReviewDecision

class ReviewRequested(_message.Message):
    __slots__ = ("review_id", "request_id", "model", "reason", "priority", "inputs", "outputs", "llm", "guard_verdict_id", "context", "requested_at", "event_time", "prompt", "chunks")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    GUARD_VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    request_id: str
    model: _common_pb2.ModelRef
    reason: ReviewReason
    priority: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    llm: _predictions_pb2.LlmExchange
    guard_verdict_id: str
    context: _containers.ScalarMap[str, str]
    requested_at: _timestamp_pb2.Timestamp
    event_time: _timestamp_pb2.Timestamp
    prompt: _common_pb2.ModelRef
    chunks: _containers.RepeatedCompositeFieldContainer[ReviewChunk]
    def __init__(self, review_id: _Optional[str] = ..., request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., reason: _Optional[_Union[ReviewReason, str]] = ..., priority: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., llm: _Optional[_Union[_predictions_pb2.LlmExchange, _Mapping]] = ..., guard_verdict_id: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prompt: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[ReviewChunk, _Mapping]]] = ...) -> None: ...

class ReviewChunk(_message.Message):
    __slots__ = ("chunk_id", "document_id", "title", "text", "score")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float
    def __init__(self, chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ReviewCompleted(_message.Message):
    __slots__ = ("review_id", "request_id", "model", "reviewer", "decision", "label", "corrected_completion", "comment", "completed_at")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    request_id: str
    model: _common_pb2.ModelRef
    reviewer: str
    decision: ReviewDecision
    label: _common_pb2.Label
    corrected_completion: str
    comment: str
    completed_at: _timestamp_pb2.Timestamp
    def __init__(self, review_id: _Optional[str] = ..., request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., reviewer: _Optional[str] = ..., decision: _Optional[_Union[ReviewDecision, str]] = ..., label: _Optional[_Union[_common_pb2.Label, _Mapping]] = ..., corrected_completion: _Optional[str] = ..., comment: _Optional[str] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
