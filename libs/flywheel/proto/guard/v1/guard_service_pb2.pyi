import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_ALLOW: _ClassVar[Action]
    ACTION_REDACT: _ClassVar[Action]
    ACTION_BLOCK: _ClassVar[Action]
    ACTION_ESCALATE: _ClassVar[Action]
ACTION_UNSPECIFIED: Action
ACTION_ALLOW: Action
ACTION_REDACT: Action
ACTION_BLOCK: Action
ACTION_ESCALATE: Action

class ContextChunk(_message.Message):
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

class CheckInputRequest(_message.Message):
    __slots__ = ("application", "request_id", "text", "context")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    application: str
    request_id: str
    text: str
    context: _containers.RepeatedCompositeFieldContainer[ContextChunk]
    def __init__(self, application: _Optional[str] = ..., request_id: _Optional[str] = ..., text: _Optional[str] = ..., context: _Optional[_Iterable[_Union[ContextChunk, _Mapping]]] = ...) -> None: ...

class CheckOutputRequest(_message.Message):
    __slots__ = ("application", "request_id", "text", "user_input", "context", "passed_text", "final")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    USER_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PASSED_TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    application: str
    request_id: str
    text: str
    user_input: str
    context: _containers.RepeatedCompositeFieldContainer[ContextChunk]
    passed_text: str
    final: bool
    def __init__(self, application: _Optional[str] = ..., request_id: _Optional[str] = ..., text: _Optional[str] = ..., user_input: _Optional[str] = ..., context: _Optional[_Iterable[_Union[ContextChunk, _Mapping]]] = ..., passed_text: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("kind", "start", "end", "replacement")
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    start: int
    end: int
    replacement: str
    def __init__(self, kind: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., replacement: _Optional[str] = ...) -> None: ...

class RailResult(_message.Message):
    __slots__ = ("rail", "score", "fired", "action", "category", "detail")
    RAIL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    rail: str
    score: float
    fired: bool
    action: str
    category: str
    detail: str
    def __init__(self, rail: _Optional[str] = ..., score: _Optional[float] = ..., fired: _Optional[bool] = ..., action: _Optional[str] = ..., category: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("verdict_id", "action", "blocked", "escalated", "text", "spans", "rule", "category", "message", "rails", "rails_fired", "application", "policy_version", "latency_ms", "detectors", "hold_chars")
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RAILS_FIELD_NUMBER: _ClassVar[int]
    RAILS_FIRED_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    HOLD_CHARS_FIELD_NUMBER: _ClassVar[int]
    verdict_id: str
    action: Action
    blocked: bool
    escalated: bool
    text: str
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    rule: str
    category: str
    message: str
    rails: _containers.RepeatedCompositeFieldContainer[RailResult]
    rails_fired: _containers.RepeatedScalarFieldContainer[str]
    application: str
    policy_version: int
    latency_ms: float
    detectors: str
    hold_chars: int
    def __init__(self, verdict_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., blocked: _Optional[bool] = ..., escalated: _Optional[bool] = ..., text: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., rule: _Optional[str] = ..., category: _Optional[str] = ..., message: _Optional[str] = ..., rails: _Optional[_Iterable[_Union[RailResult, _Mapping]]] = ..., rails_fired: _Optional[_Iterable[str]] = ..., application: _Optional[str] = ..., policy_version: _Optional[int] = ..., latency_ms: _Optional[float] = ..., detectors: _Optional[str] = ..., hold_chars: _Optional[int] = ...) -> None: ...

class CheckInputResponse(_message.Message):
    __slots__ = ("verdict",)
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class CheckOutputResponse(_message.Message):
    __slots__ = ("verdict",)
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("application", "version", "yaml", "created_by", "created_at", "fail_closed", "stream_window_chars", "blocked_input_response", "check_timeout_ms", "description")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    STREAM_WINDOW_CHARS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_INPUT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    application: str
    version: int
    yaml: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    fail_closed: bool
    stream_window_chars: int
    blocked_input_response: str
    check_timeout_ms: int
    description: str
    def __init__(self, application: _Optional[str] = ..., version: _Optional[int] = ..., yaml: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fail_closed: _Optional[bool] = ..., stream_window_chars: _Optional[int] = ..., blocked_input_response: _Optional[str] = ..., check_timeout_ms: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class PutPolicyRequest(_message.Message):
    __slots__ = ("application", "yaml")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    application: str
    yaml: str
    def __init__(self, application: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class PutPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("application", "version")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    application: str
    version: int
    def __init__(self, application: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...
