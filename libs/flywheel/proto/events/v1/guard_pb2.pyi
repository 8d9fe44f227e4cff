import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GuardStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARD_STAGE_UNSPECIFIED: _ClassVar[GuardStage]
    GUARD_STAGE_INPUT: _ClassVar[GuardStage]
    GUARD_STAGE_OUTPUT: _ClassVar[GuardStage]

class GuardAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARD_ACTION_UNSPECIFIED: _ClassVar[GuardAction]
    GUARD_ACTION_ALLOW: _ClassVar[GuardAction]
    GUARD_ACTION_REDACT: _ClassVar[GuardAction]
    GUARD_ACTION_BLOCK: _ClassVar[GuardAction]
    GUARD_ACTION_REVIEW: _ClassVar[GuardAction]
GUARD_STAGE_UNSPECIFIED: GuardStage
GUARD_STAGE_INPUT: GuardStage
GUARD_STAGE_OUTPUT: GuardStage
GUARD_ACTION_UNSPECIFIED: GuardAction
GUARD_ACTION_ALLOW: GuardAction
GUARD_ACTION_REDACT: GuardAction
GUARD_ACTION_BLOCK: GuardAction
GUARD_ACTION_REVIEW: GuardAction

class GuardFinding(_message.Message):
    __slots__ = ("category", "detail", "score", "start", "end")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    category: str
    detail: str
    score: float
    start: int
    end: int
    def __init__(self, category: _Optional[str] = ..., detail: _Optional[str] = ..., score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class GuardVerdict(_message.Message):
    __slots__ = ("verdict_id", "request_id", "stage", "policy", "action", "findings", "latency_ms", "checked_at", "application", "policy_version", "scores", "rails_fired", "blocked", "rule", "redacted_text", "principal", "detectors", "stream_window")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RAILS_FIRED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REDACTED_TEXT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    STREAM_WINDOW_FIELD_NUMBER: _ClassVar[int]
    verdict_id: str
    request_id: str
    stage: GuardStage
    policy: str
    action: GuardAction
    findings: _containers.RepeatedCompositeFieldContainer[GuardFinding]
    latency_ms: float
    checked_at: _timestamp_pb2.Timestamp
    application: str
    policy_version: int
    scores: _containers.ScalarMap[str, float]
    rails_fired: _containers.RepeatedScalarFieldContainer[str]
    blocked: bool
    rule: str
    redacted_text: str
    principal: str
    detectors: str
    stream_window: bool
    def __init__(self, verdict_id: _Optional[str] = ..., request_id: _Optional[str] = ..., stage: _Optional[_Union[GuardStage, str]] = ..., policy: _Optional[str] = ..., action: _Optional[_Union[GuardAction, str]] = ..., findings: _Optional[_Iterable[_Union[GuardFinding, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., application: _Optional[str] = ..., policy_version: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ..., rails_fired: _Optional[_Iterable[str]] = ..., blocked: _Optional[bool] = ..., rule: _Optional[str] = ..., redacted_text: _Optional[str] = ..., principal: _Optional[str] = ..., detectors: _Optional[str] = ..., stream_window: _Optional[bool] = ...) -> None: ...
