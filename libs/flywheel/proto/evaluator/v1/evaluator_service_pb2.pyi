import datetime

from flywheel.proto.events.v1 import models_pb2 as _models_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuestionResult(_message.Message):
    __slots__ = ("item_id", "kind", "question", "reference", "candidate_answer", "baseline_answer", "candidate_scores", "baseline_scores", "failing", "reason")
    class CandidateScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaselineScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORES_FIELD_NUMBER: _ClassVar[int]
    FAILING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    kind: str
    question: str
    reference: str
    candidate_answer: str
    baseline_answer: str
    candidate_scores: _containers.ScalarMap[str, float]
    baseline_scores: _containers.ScalarMap[str, float]
    failing: bool
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., kind: _Optional[str] = ..., question: _Optional[str] = ..., reference: _Optional[str] = ..., candidate_answer: _Optional[str] = ..., baseline_answer: _Optional[str] = ..., candidate_scores: _Optional[_Mapping[str, float]] = ..., baseline_scores: _Optional[_Mapping[str, float]] = ..., failing: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SliceMetrics(_message.Message):
    __slots__ = ("feature", "value", "rows", "candidate", "baseline")
    class CandidateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaselineEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: str
    rows: int
    candidate: _containers.ScalarMap[str, float]
    baseline: _containers.ScalarMap[str, float]
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[str] = ..., rows: _Optional[int] = ..., candidate: _Optional[_Mapping[str, float]] = ..., baseline: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CalibrationBin(_message.Message):
    __slots__ = ("lower", "upper", "rows", "mean_predicted", "observed_rate")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_RATE_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    rows: int
    mean_predicted: float
    observed_rate: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., rows: _Optional[int] = ..., mean_predicted: _Optional[float] = ..., observed_rate: _Optional[float] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("evaluation_id", "model_name", "candidate_version", "baseline_version", "verdict", "candidate_metrics", "baseline_metrics", "checks", "slices", "candidate_calibration", "baseline_calibration", "data_start", "data_end", "rows", "error", "report_uri", "started_at", "completed_at", "requested_by", "golden_set", "golden_set_version", "questions", "candidate_kind")
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
    SLICES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    DATA_START_FIELD_NUMBER: _ClassVar[int]
    DATA_END_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORT_URI_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_SET_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_KIND_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    model_name: str
    candidate_version: int
    baseline_version: int
    verdict: _models_pb2.EvaluationVerdict
    candidate_metrics: _containers.ScalarMap[str, float]
    baseline_metrics: _containers.ScalarMap[str, float]
    checks: _containers.RepeatedCompositeFieldContainer[_models_pb2.GateCheck]
    slices: _containers.RepeatedCompositeFieldContainer[SliceMetrics]
    candidate_calibration: _containers.RepeatedCompositeFieldContainer[CalibrationBin]
    baseline_calibration: _containers.RepeatedCompositeFieldContainer[CalibrationBin]
    data_start: _timestamp_pb2.Timestamp
    data_end: _timestamp_pb2.Timestamp
    rows: int
    error: str
    report_uri: str
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    requested_by: str
    golden_set: str
    golden_set_version: int
    questions: _containers.RepeatedCompositeFieldContainer[QuestionResult]
    candidate_kind: str
    def __init__(self, evaluation_id: _Optional[str] = ..., model_name: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., verdict: _Optional[_Union[_models_pb2.EvaluationVerdict, str]] = ..., candidate_metrics: _Optional[_Mapping[str, float]] = ..., baseline_metrics: _Optional[_Mapping[str, float]] = ..., checks: _Optional[_Iterable[_Union[_models_pb2.GateCheck, _Mapping]]] = ..., slices: _Optional[_Iterable[_Union[SliceMetrics, _Mapping]]] = ..., candidate_calibration: _Optional[_Iterable[_Union[CalibrationBin, _Mapping]]] = ..., baseline_calibration: _Optional[_Iterable[_Union[CalibrationBin, _Mapping]]] = ..., data_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., error: _Optional[str] = ..., report_uri: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_by: _Optional[str] = ..., golden_set: _Optional[str] = ..., golden_set_version: _Optional[int] = ..., questions: _Optional[_Iterable[_Union[QuestionResult, _Mapping]]] = ..., candidate_kind: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model_name", "candidate_version", "baseline_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    candidate_version: int
    baseline_version: int
    def __init__(self, model_name: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("model_name", "page_size", "page_token")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    page_size: int
    page_token: str
    def __init__(self, model_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GoldenSet(_message.Message):
    __slots__ = ("application", "version", "description", "content_sha256", "yaml", "answerable_items", "refusal_items", "created_at", "created_by")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    ANSWERABLE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    application: str
    version: int
    description: str
    content_sha256: str
    yaml: str
    answerable_items: int
    refusal_items: int
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    def __init__(self, application: _Optional[str] = ..., version: _Optional[int] = ..., description: _Optional[str] = ..., content_sha256: _Optional[str] = ..., yaml: _Optional[str] = ..., answerable_items: _Optional[int] = ..., refusal_items: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ...) -> None: ...

class PutGoldenSetRequest(_message.Message):
    __slots__ = ("yaml",)
    YAML_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    def __init__(self, yaml: _Optional[str] = ...) -> None: ...

class PutGoldenSetResponse(_message.Message):
    __slots__ = ("golden_set", "created")
    GOLDEN_SET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    golden_set: GoldenSet
    created: bool
    def __init__(self, golden_set: _Optional[_Union[GoldenSet, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetGoldenSetRequest(_message.Message):
    __slots__ = ("application", "version")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    application: str
    version: int
    def __init__(self, application: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetGoldenSetResponse(_message.Message):
    __slots__ = ("golden_set",)
    GOLDEN_SET_FIELD_NUMBER: _ClassVar[int]
    golden_set: GoldenSet
    def __init__(self, golden_set: _Optional[_Union[GoldenSet, _Mapping]] = ...) -> None: ...

class ListGoldenSetsRequest(_message.Message):
    __slots__ = ("application",)
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    application: str
    def __init__(self, application: _Optional[str] = ...) -> None: ...

class ListGoldenSetsResponse(_message.Message):
    __slots__ = ("golden_sets",)
    GOLDEN_SETS_FIELD_NUMBER: _ClassVar[int]
    golden_sets: _containers.RepeatedCompositeFieldContainer[GoldenSet]
    def __init__(self, golden_sets: _Optional[_Iterable[_Union[GoldenSet, _Mapping]]] = ...) -> None: ...
