import datetime

from flywheel.proto.events.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionArm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_ARM_UNSPECIFIED: _ClassVar[PredictionArm]
    PREDICTION_ARM_CHAMPION: _ClassVar[PredictionArm]
    PREDICTION_ARM_CHALLENGER: _ClassVar[PredictionArm]
    PREDICTION_ARM_SHADOW: _ClassVar[PredictionArm]
    PREDICTION_ARM_EVALUATION: _ClassVar[PredictionArm]

class FeedbackSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_SOURCE_UNSPECIFIED: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_GROUND_TRUTH: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_REVIEWER: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_END_USER: _ClassVar[FeedbackSource]
PREDICTION_ARM_UNSPECIFIED: PredictionArm
PREDICTION_ARM_CHAMPION: PredictionArm
PREDICTION_ARM_CHALLENGER: PredictionArm
PREDICTION_ARM_SHADOW: PredictionArm
PREDICTION_ARM_EVALUATION: PredictionArm
FEEDBACK_SOURCE_UNSPECIFIED: FeedbackSource
FEEDBACK_SOURCE_GROUND_TRUTH: FeedbackSource
FEEDBACK_SOURCE_REVIEWER: FeedbackSource
FEEDBACK_SOURCE_END_USER: FeedbackSource

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class LlmExchange(_message.Message):
    __slots__ = ("messages", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason", "time_to_first_token_ms", "context_chunk_ids", "cache_hit", "application", "prompt_template", "context_chunk_scores", "cache", "cost", "tenant", "cited_titles")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_CHUNK_SCORES_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CITED_TITLES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    time_to_first_token_ms: float
    context_chunk_ids: _containers.RepeatedScalarFieldContainer[str]
    cache_hit: bool
    application: str
    prompt_template: _common_pb2.ModelRef
    context_chunk_scores: _containers.RepeatedScalarFieldContainer[float]
    cache: str
    cost: float
    tenant: str
    cited_titles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt: _Optional[str] = ..., completion: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., time_to_first_token_ms: _Optional[float] = ..., context_chunk_ids: _Optional[_Iterable[str]] = ..., cache_hit: _Optional[bool] = ..., application: _Optional[str] = ..., prompt_template: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., context_chunk_scores: _Optional[_Iterable[float]] = ..., cache: _Optional[str] = ..., cost: _Optional[float] = ..., tenant: _Optional[str] = ..., cited_titles: _Optional[_Iterable[str]] = ...) -> None: ...

class PredictionLogged(_message.Message):
    __slots__ = ("request_id", "model", "arm", "inputs", "inputs_uri", "outputs", "entity_ids", "latency_ms", "timestamp", "traceparent", "sample_rate", "llm", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    arm: PredictionArm
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    inputs_uri: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    entity_ids: _containers.RepeatedScalarFieldContainer[str]
    latency_ms: float
    timestamp: _timestamp_pb2.Timestamp
    traceparent: str
    sample_rate: float
    llm: LlmExchange
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., arm: _Optional[_Union[PredictionArm, str]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., inputs_uri: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., entity_ids: _Optional[_Iterable[str]] = ..., latency_ms: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ..., sample_rate: _Optional[float] = ..., llm: _Optional[_Union[LlmExchange, _Mapping]] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeedbackReceived(_message.Message):
    __slots__ = ("feedback_id", "request_id", "entity_id", "model", "source", "label", "corrected_completion", "comment", "observed_at", "entity_keys", "event_time")
    class EntityKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    request_id: str
    entity_id: str
    model: _common_pb2.ModelRef
    source: FeedbackSource
    label: _common_pb2.Label
    corrected_completion: str
    comment: str
    observed_at: _timestamp_pb2.Timestamp
    entity_keys: _containers.ScalarMap[str, str]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, feedback_id: _Optional[str] = ..., request_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., source: _Optional[_Union[FeedbackSource, str]] = ..., label: _Optional[_Union[_common_pb2.Label, _Mapping]] = ..., corrected_completion: _Optional[str] = ..., comment: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., entity_keys: _Optional[_Mapping[str, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
