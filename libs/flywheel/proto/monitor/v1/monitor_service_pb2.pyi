import datetime

from flywheel.proto.events.v1 import common_pb2 as _common_pb2
from flywheel.proto.events.v1 import monitoring_pb2 as _monitoring_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WindowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_STATE_UNSPECIFIED: _ClassVar[WindowState]
    WINDOW_STATE_PENDING: _ClassVar[WindowState]
    WINDOW_STATE_ANALYZED: _ClassVar[WindowState]
    WINDOW_STATE_FAILED: _ClassVar[WindowState]

class ReportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_FORMAT_UNSPECIFIED: _ClassVar[ReportFormat]
    REPORT_FORMAT_JSON: _ClassVar[ReportFormat]
    REPORT_FORMAT_HTML: _ClassVar[ReportFormat]
WINDOW_STATE_UNSPECIFIED: WindowState
WINDOW_STATE_PENDING: WindowState
WINDOW_STATE_ANALYZED: WindowState
WINDOW_STATE_FAILED: WindowState
REPORT_FORMAT_UNSPECIFIED: ReportFormat
REPORT_FORMAT_JSON: ReportFormat
REPORT_FORMAT_HTML: ReportFormat

class Window(_message.Message):
    __slots__ = ("window_id", "model", "sequence", "state", "start", "end", "rows", "labelled_rows", "features", "drifted_share", "drifted", "prediction_drift", "target_drift", "performance", "estimated_performance", "drift_event_id", "error", "closed_at", "analyzed_at")
    class PerformanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class EstimatedPerformanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_SHARE_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    TARGET_DRIFT_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    ANALYZED_AT_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    model: _common_pb2.ModelRef
    sequence: int
    state: WindowState
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    rows: int
    labelled_rows: int
    features: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.FeatureDrift]
    drifted_share: float
    drifted: bool
    prediction_drift: _monitoring_pb2.FeatureDrift
    target_drift: _monitoring_pb2.FeatureDrift
    performance: _containers.ScalarMap[str, float]
    estimated_performance: _containers.ScalarMap[str, float]
    drift_event_id: str
    error: str
    closed_at: _timestamp_pb2.Timestamp
    analyzed_at: _timestamp_pb2.Timestamp
    def __init__(self, window_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., sequence: _Optional[int] = ..., state: _Optional[_Union[WindowState, str]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., labelled_rows: _Optional[int] = ..., features: _Optional[_Iterable[_Union[_monitoring_pb2.FeatureDrift, _Mapping]]] = ..., drifted_share: _Optional[float] = ..., drifted: _Optional[bool] = ..., prediction_drift: _Optional[_Union[_monitoring_pb2.FeatureDrift, _Mapping]] = ..., target_drift: _Optional[_Union[_monitoring_pb2.FeatureDrift, _Mapping]] = ..., performance: _Optional[_Mapping[str, float]] = ..., estimated_performance: _Optional[_Mapping[str, float]] = ..., drift_event_id: _Optional[str] = ..., error: _Optional[str] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., analyzed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("model", "windows", "open_window_rows", "drifted_of_last", "hysteresis_n", "hysteresis_m", "cooldown_until", "last_alert", "last_retrain_request_id", "recent_windows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    OPEN_WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_OF_LAST_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_N_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_M_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    LAST_ALERT_FIELD_NUMBER: _ClassVar[int]
    LAST_RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    windows: int
    open_window_rows: int
    drifted_of_last: int
    hysteresis_n: int
    hysteresis_m: int
    cooldown_until: _timestamp_pb2.Timestamp
    last_alert: _monitoring_pb2.DriftDetected
    last_retrain_request_id: str
    recent_windows: _containers.RepeatedCompositeFieldContainer[Window]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., windows: _Optional[int] = ..., open_window_rows: _Optional[int] = ..., drifted_of_last: _Optional[int] = ..., hysteresis_n: _Optional[int] = ..., hysteresis_m: _Optional[int] = ..., cooldown_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_alert: _Optional[_Union[_monitoring_pb2.DriftDetected, _Mapping]] = ..., last_retrain_request_id: _Optional[str] = ..., recent_windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ("model_name", "recent_windows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    RECENT_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    recent_windows: int
    def __init__(self, model_name: _Optional[str] = ..., recent_windows: _Optional[int] = ...) -> None: ...

class GetModelStatusResponse(_message.Message):
    __slots__ = ("model_name", "versions")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    def __init__(self, model_name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ...) -> None: ...

class ListWindowsRequest(_message.Message):
    __slots__ = ("model_name", "version", "page_size", "page_token")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    page_size: int
    page_token: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWindowsResponse(_message.Message):
    __slots__ = ("windows", "next_page_token")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    next_page_token: str
    def __init__(self, windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("window_id", "format")
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    format: ReportFormat
    def __init__(self, window_id: _Optional[str] = ..., format: _Optional[_Union[ReportFormat, str]] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("window", "format", "content")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    window: Window
    format: ReportFormat
    content: str
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., format: _Optional[_Union[ReportFormat, str]] = ..., content: _Optional[str] = ...) -> None: ...

class LlmCheck(_message.Message):
    __slots__ = ("metric", "value", "reference", "score", "threshold", "degraded")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    reference: float
    score: float
    threshold: float
    degraded: bool
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., reference: _Optional[float] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., degraded: _Optional[bool] = ...) -> None: ...

class LlmWindow(_message.Message):
    __slots__ = ("window_id", "application", "model", "sequence", "closed", "generations", "start", "end", "scores", "reference", "checks", "is_reference", "degraded", "drift_event_id", "retrain_request_id", "reviews", "closed_at")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ReferenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    IS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    application: str
    model: _common_pb2.ModelRef
    sequence: int
    closed: bool
    generations: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    scores: _containers.ScalarMap[str, float]
    reference: _containers.ScalarMap[str, float]
    checks: _containers.RepeatedCompositeFieldContainer[LlmCheck]
    is_reference: bool
    degraded: bool
    drift_event_id: str
    retrain_request_id: str
    reviews: int
    closed_at: _timestamp_pb2.Timestamp
    def __init__(self, window_id: _Optional[str] = ..., application: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., sequence: _Optional[int] = ..., closed: _Optional[bool] = ..., generations: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scores: _Optional[_Mapping[str, float]] = ..., reference: _Optional[_Mapping[str, float]] = ..., checks: _Optional[_Iterable[_Union[LlmCheck, _Mapping]]] = ..., is_reference: _Optional[bool] = ..., degraded: _Optional[bool] = ..., drift_event_id: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., reviews: _Optional[int] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListLlmWindowsRequest(_message.Message):
    __slots__ = ("application", "page_size", "page_token")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    application: str
    page_size: int
    page_token: str
    def __init__(self, application: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLlmWindowsResponse(_message.Message):
    __slots__ = ("windows", "next_page_token", "champion", "last_alert_at")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    LAST_ALERT_AT_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[LlmWindow]
    next_page_token: str
    champion: _common_pb2.ModelRef
    last_alert_at: _timestamp_pb2.Timestamp
    def __init__(self, windows: _Optional[_Iterable[_Union[LlmWindow, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., champion: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., last_alert_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
