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

class PromotionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_REASON_UNSPECIFIED: _ClassVar[PromotionReason]
    PROMOTION_REASON_MANUAL: _ClassVar[PromotionReason]
    PROMOTION_REASON_EVALUATION: _ClassVar[PromotionReason]
    PROMOTION_REASON_ROLLBACK: _ClassVar[PromotionReason]

class EvaluationVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_VERDICT_UNSPECIFIED: _ClassVar[EvaluationVerdict]
    EVALUATION_VERDICT_PASSED: _ClassVar[EvaluationVerdict]
    EVALUATION_VERDICT_FAILED: _ClassVar[EvaluationVerdict]
    EVALUATION_VERDICT_ERROR: _ClassVar[EvaluationVerdict]

class RetrainReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRAIN_REASON_UNSPECIFIED: _ClassVar[RetrainReason]
    RETRAIN_REASON_DRIFT: _ClassVar[RetrainReason]
    RETRAIN_REASON_PERFORMANCE: _ClassVar[RetrainReason]
    RETRAIN_REASON_SCHEDULE: _ClassVar[RetrainReason]
    RETRAIN_REASON_MANUAL: _ClassVar[RetrainReason]
    RETRAIN_REASON_REVIEWS: _ClassVar[RetrainReason]
PROMOTION_REASON_UNSPECIFIED: PromotionReason
PROMOTION_REASON_MANUAL: PromotionReason
PROMOTION_REASON_EVALUATION: PromotionReason
PROMOTION_REASON_ROLLBACK: PromotionReason
EVALUATION_VERDICT_UNSPECIFIED: EvaluationVerdict
EVALUATION_VERDICT_PASSED: EvaluationVerdict
EVALUATION_VERDICT_FAILED: EvaluationVerdict
EVALUATION_VERDICT_ERROR: EvaluationVerdict
RETRAIN_REASON_UNSPECIFIED: RetrainReason
RETRAIN_REASON_DRIFT: RetrainReason
RETRAIN_REASON_PERFORMANCE: RetrainReason
RETRAIN_REASON_SCHEDULE: RetrainReason
RETRAIN_REASON_MANUAL: RetrainReason
RETRAIN_REASON_REVIEWS: RetrainReason

class ModelRegistered(_message.Message):
    __slots__ = ("model", "kind", "framework", "artifact_uri", "artifact_sha256", "artifact_size_bytes", "lineage", "metrics", "tags", "registered_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    kind: _common_pb2.ModelKind
    framework: str
    artifact_uri: str
    artifact_sha256: str
    artifact_size_bytes: int
    lineage: _common_pb2.Lineage
    metrics: _containers.ScalarMap[str, float]
    tags: _containers.ScalarMap[str, str]
    registered_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., framework: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tags: _Optional[_Mapping[str, str]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("model_name", "alias", "previous_version", "version", "reason", "evaluation_id", "lineage", "promoted_at", "actor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    alias: str
    previous_version: int
    version: int
    reason: PromotionReason
    evaluation_id: str
    lineage: _common_pb2.Lineage
    promoted_at: _timestamp_pb2.Timestamp
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., alias: _Optional[str] = ..., previous_version: _Optional[int] = ..., version: _Optional[int] = ..., reason: _Optional[_Union[PromotionReason, str]] = ..., evaluation_id: _Optional[str] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., promoted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class GateCheck(_message.Message):
    __slots__ = ("name", "passed", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class EvaluationCompleted(_message.Message):
    __slots__ = ("evaluation_id", "model_name", "candidate_version", "baseline_version", "verdict", "candidate_metrics", "baseline_metrics", "checks", "report_uri", "lineage", "completed_at")
    class CandidateMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaselineMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_METRICS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    REPORT_URI_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    model_name: str
    candidate_version: int
    baseline_version: int
    verdict: EvaluationVerdict
    candidate_metrics: _containers.ScalarMap[str, float]
    baseline_metrics: _containers.ScalarMap[str, float]
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    report_uri: str
    lineage: _common_pb2.Lineage
    completed_at: _timestamp_pb2.Timestamp
    def __init__(self, evaluation_id: _Optional[str] = ..., model_name: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., verdict: _Optional[_Union[EvaluationVerdict, str]] = ..., candidate_metrics: _Optional[_Mapping[str, float]] = ..., baseline_metrics: _Optional[_Mapping[str, float]] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ..., report_uri: _Optional[str] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetrainRequested(_message.Message):
    __slots__ = ("request_id", "model_name", "kind", "reason", "window_start", "window_end", "parent", "drift_event_id", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    kind: _common_pb2.ModelKind
    reason: RetrainReason
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    parent: _common_pb2.ModelRef
    drift_event_id: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., reason: _Optional[_Union[RetrainReason, str]] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parent: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., drift_event_id: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...
