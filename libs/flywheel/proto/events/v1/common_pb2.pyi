from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_PREDICTIVE: _ClassVar[ModelKind]
    MODEL_KIND_LLM: _ClassVar[ModelKind]
    MODEL_KIND_LORA_ADAPTER: _ClassVar[ModelKind]
    MODEL_KIND_EMBEDDING: _ClassVar[ModelKind]
    MODEL_KIND_PROMPT: _ClassVar[ModelKind]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_PREDICTIVE: ModelKind
MODEL_KIND_LLM: ModelKind
MODEL_KIND_LORA_ADAPTER: ModelKind
MODEL_KIND_EMBEDDING: ModelKind
MODEL_KIND_PROMPT: ModelKind

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("parent_version", "training_run_id", "dataset_snapshot_id", "feature_names", "eval_report_refs", "drift_event_id", "retrain_request_id", "code_version", "base_model")
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    EVAL_REPORT_REFS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    parent_version: int
    training_run_id: str
    dataset_snapshot_id: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    eval_report_refs: _containers.RepeatedScalarFieldContainer[str]
    drift_event_id: str
    retrain_request_id: str
    code_version: str
    base_model: ModelRef
    def __init__(self, parent_version: _Optional[int] = ..., training_run_id: _Optional[str] = ..., dataset_snapshot_id: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., eval_report_refs: _Optional[_Iterable[str]] = ..., drift_event_id: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., code_version: _Optional[str] = ..., base_model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "fp_contents", "int_contents", "bytes_contents", "bool_contents")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FP_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    INT_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    BOOL_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    fp_contents: _containers.RepeatedScalarFieldContainer[float]
    int_contents: _containers.RepeatedScalarFieldContainer[int]
    bytes_contents: _containers.RepeatedScalarFieldContainer[bytes]
    bool_contents: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., fp_contents: _Optional[_Iterable[float]] = ..., int_contents: _Optional[_Iterable[int]] = ..., bytes_contents: _Optional[_Iterable[bytes]] = ..., bool_contents: _Optional[_Iterable[bool]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("number", "text", "flag")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    number: float
    text: str
    flag: bool
    def __init__(self, number: _Optional[float] = ..., text: _Optional[str] = ..., flag: _Optional[bool] = ...) -> None: ...
