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
    __slots__ = ("epoch", "train_loss", "eval_loss")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    eval_loss: float
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., eval_loss: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "application", "model_name", "status", "failure_reason", "settings", "metrics", "epochs", "base", "parent", "registered_version", "dataset_snapshot_id", "train_examples", "eval_examples", "reviews", "reason", "retrain_request_id", "drift_event_id", "requested_by", "code_version", "step", "total_steps", "checkpoint_step", "resumed_from_step", "attempts", "coalesced_requests", "stage", "progress", "created_at", "started_at", "finished_at")
    class SettingsEntry(_message.Message):
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
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    COALESCED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    application: str
    model_name: str
    status: RunStatus
    failure_reason: str
    settings: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    base: _common_pb2.ModelRef
    parent: _common_pb2.ModelRef
    registered_version: int
    dataset_snapshot_id: str
    train_examples: int
    eval_examples: int
    reviews: int
    reason: _models_pb2.RetrainReason
    retrain_request_id: str
    drift_event_id: str
    requested_by: str
    code_version: str
    step: int
    total_steps: int
    checkpoint_step: int
    resumed_from_step: int
    attempts: int
    coalesced_requests: int
    stage: str
    progress: float
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., application: _Optional[str] = ..., model_name: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., failure_reason: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., base: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., parent: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., registered_version: _Optional[int] = ..., dataset_snapshot_id: _Optional[str] = ..., train_examples: _Optional[int] = ..., eval_examples: _Optional[int] = ..., reviews: _Optional[int] = ..., reason: _Optional[_Union[_models_pb2.RetrainReason, str]] = ..., retrain_request_id: _Optional[str] = ..., drift_event_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., code_version: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., checkpoint_step: _Optional[int] = ..., resumed_from_step: _Optional[int] = ..., attempts: _Optional[int] = ..., coalesced_requests: _Optional[int] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("application", "reason", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    application: str
    reason: _models_pb2.RetrainReason
    settings: _containers.ScalarMap[str, str]
    def __init__(self, application: _Optional[str] = ..., reason: _Optional[_Union[_models_pb2.RetrainReason, str]] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("application", "page_size", "page_token")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    application: str
    page_size: int
    page_token: str
    def __init__(self, application: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

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

class GetDatasetRequest(_message.Message):
    __slots__ = ("application", "snapshot_id")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    application: str
    snapshot_id: str
    def __init__(self, application: _Optional[str] = ..., snapshot_id: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("application", "examples", "corrections", "approvals", "train_examples", "eval_examples", "duplicates", "redactions", "pending_decisions", "rejected", "snapshot_id", "new_corrections", "correction_threshold", "last_run_id", "last_snapshot_id", "first_example_at", "last_example_at", "review_ids", "reviews")
    class RedactionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REDACTIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_EXAMPLE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EXAMPLE_AT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_IDS_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    application: str
    examples: int
    corrections: int
    approvals: int
    train_examples: int
    eval_examples: int
    duplicates: int
    redactions: _containers.ScalarMap[str, int]
    pending_decisions: int
    rejected: int
    snapshot_id: str
    new_corrections: int
    correction_threshold: int
    last_run_id: str
    last_snapshot_id: str
    first_example_at: _timestamp_pb2.Timestamp
    last_example_at: _timestamp_pb2.Timestamp
    review_ids: _containers.RepeatedScalarFieldContainer[str]
    reviews: int
    def __init__(self, application: _Optional[str] = ..., examples: _Optional[int] = ..., corrections: _Optional[int] = ..., approvals: _Optional[int] = ..., train_examples: _Optional[int] = ..., eval_examples: _Optional[int] = ..., duplicates: _Optional[int] = ..., redactions: _Optional[_Mapping[str, int]] = ..., pending_decisions: _Optional[int] = ..., rejected: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., new_corrections: _Optional[int] = ..., correction_threshold: _Optional[int] = ..., last_run_id: _Optional[str] = ..., last_snapshot_id: _Optional[str] = ..., first_example_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_example_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., review_ids: _Optional[_Iterable[str]] = ..., reviews: _Optional[int] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...
