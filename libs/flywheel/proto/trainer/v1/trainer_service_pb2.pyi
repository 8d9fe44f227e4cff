import datetime

from flywheel.proto.events.v1 import common_pb2 as _common_pb2
from flywheel.proto.events.v1 import models_pb2 as _models_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_QUEUED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_QUEUED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "train_loss", "validation_loss", "validation_roc_auc")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    validation_loss: float
    validation_roc_auc: float
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., validation_roc_auc: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "model_name", "status", "failure_reason", "window_start", "window_end", "params", "metrics", "epochs", "registered_version", "dataset_snapshot_id", "feature_names", "code_version", "reason", "retrain_request_id", "drift_event_id", "parent", "created_at", "started_at", "finished_at", "train_rows", "validation_rows", "test_rows", "requested_by")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_name: str
    status: RunStatus
    failure_reason: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    params: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    registered_version: int
    dataset_snapshot_id: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    code_version: str
    reason: _models_pb2.RetrainReason
    retrain_request_id: str
    drift_event_id: str
    parent: _common_pb2.ModelRef
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    train_rows: int
    validation_rows: int
    test_rows: int
    requested_by: str
    def __init__(self, run_id: _Optional[str] = ..., model_name: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., failure_reason: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., params: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., registered_version: _Optional[int] = ..., dataset_snapshot_id: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., code_version: _Optional[str] = ..., reason: _Optional[_Union[_models_pb2.RetrainReason, str]] = ..., retrain_request_id: _Optional[str] = ..., drift_event_id: _Optional[str] = ..., parent: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., train_rows: _Optional[int] = ..., validation_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., requested_by: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("model_name", "window_start", "window_end", "params", "reason")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    params: _containers.ScalarMap[str, str]
    reason: _models_pb2.RetrainReason
    def __init__(self, model_name: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., params: _Optional[_Mapping[str, str]] = ..., reason: _Optional[_Union[_models_pb2.RetrainReason, str]] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run", "coalesced")
    RUN_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    run: Run
    coalesced: bool
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., coalesced: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model_name", "page_size", "page_token")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    page_size: int
    page_token: str
    def __init__(self, model_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("run", "stage", "progress")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    run: Run
    stage: str
    progress: float
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ...) -> None: ...
