import datetime

from flywheel.proto.events.v1 import features_pb2 as _features_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_PRESENT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_NOT_FOUND: _ClassVar[FeatureStatus]
    FEATURE_STATUS_OUTSIDE_MAX_AGE: _ClassVar[FeatureStatus]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_PRESENT: FeatureStatus
FEATURE_STATUS_NOT_FOUND: FeatureStatus
FEATURE_STATUS_OUTSIDE_MAX_AGE: FeatureStatus

class FeatureSelection(_message.Message):
    __slots__ = ("feature_service", "features")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    features: FeatureRefs
    def __init__(self, feature_service: _Optional[str] = ..., features: _Optional[_Union[FeatureRefs, _Mapping]] = ...) -> None: ...

class FeatureRefs(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refs: _Optional[_Iterable[str]] = ...) -> None: ...

class EntityRow(_message.Message):
    __slots__ = ("keys", "event_time")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _features_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_features_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[str, _features_pb2.FeatureValue]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, keys: _Optional[_Mapping[str, _features_pb2.FeatureValue]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("values", "statuses")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[_features_pb2.FeatureValue]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    def __init__(self, values: _Optional[_Iterable[_Union[_features_pb2.FeatureValue, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("features", "entity_rows")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ROWS_FIELD_NUMBER: _ClassVar[int]
    features: FeatureSelection
    entity_rows: _containers.RepeatedCompositeFieldContainer[EntityRow]
    def __init__(self, features: _Optional[_Union[FeatureSelection, _Mapping]] = ..., entity_rows: _Optional[_Iterable[_Union[EntityRow, _Mapping]]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("feature_names", "rows")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, feature_names: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...

class GetHistoricalFeaturesRequest(_message.Message):
    __slots__ = ("features", "entity_rows", "page_size")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ROWS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    features: FeatureSelection
    entity_rows: _containers.RepeatedCompositeFieldContainer[EntityRow]
    page_size: int
    def __init__(self, features: _Optional[_Union[FeatureSelection, _Mapping]] = ..., entity_rows: _Optional[_Iterable[_Union[EntityRow, _Mapping]]] = ..., page_size: _Optional[int] = ...) -> None: ...

class GetHistoricalFeaturesResponse(_message.Message):
    __slots__ = ("feature_names", "entity_rows", "rows")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    entity_rows: _containers.RepeatedCompositeFieldContainer[EntityRow]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, feature_names: _Optional[_Iterable[str]] = ..., entity_rows: _Optional[_Iterable[_Union[EntityRow, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...

class PushRow(_message.Message):
    __slots__ = ("entity_keys", "values", "event_time")
    class EntityKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _features_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_features_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _features_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_features_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    ENTITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    entity_keys: _containers.MessageMap[str, _features_pb2.FeatureValue]
    values: _containers.MessageMap[str, _features_pb2.FeatureValue]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, entity_keys: _Optional[_Mapping[str, _features_pb2.FeatureValue]] = ..., values: _Optional[_Mapping[str, _features_pb2.FeatureValue]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PushFeaturesRequest(_message.Message):
    __slots__ = ("push_source", "rows")
    PUSH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    push_source: str
    rows: _containers.RepeatedCompositeFieldContainer[PushRow]
    def __init__(self, push_source: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[PushRow, _Mapping]]] = ...) -> None: ...

class PushFeaturesResponse(_message.Message):
    __slots__ = ("rows_written",)
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    rows_written: int
    def __init__(self, rows_written: _Optional[int] = ...) -> None: ...

class MaterializeRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "feature_views")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VIEWS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    feature_views: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_views: _Optional[_Iterable[str]] = ...) -> None: ...

class MaterializeResponse(_message.Message):
    __slots__ = ("feature_views",)
    FEATURE_VIEWS_FIELD_NUMBER: _ClassVar[int]
    feature_views: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature_views: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFeatureViewsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureField(_message.Message):
    __slots__ = ("name", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class FeatureView(_message.Message):
    __slots__ = ("name", "entities", "features", "ttl", "online", "push_source", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    PUSH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    entities: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedCompositeFieldContainer[FeatureField]
    ttl: _duration_pb2.Duration
    online: bool
    push_source: str
    description: str
    def __init__(self, name: _Optional[str] = ..., entities: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[_Union[FeatureField, _Mapping]]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., online: _Optional[bool] = ..., push_source: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class FeatureService(_message.Message):
    __slots__ = ("name", "features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFeatureViewsResponse(_message.Message):
    __slots__ = ("feature_views", "feature_services")
    FEATURE_VIEWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICES_FIELD_NUMBER: _ClassVar[int]
    feature_views: _containers.RepeatedCompositeFieldContainer[FeatureView]
    feature_services: _containers.RepeatedCompositeFieldContainer[FeatureService]
    def __init__(self, feature_views: _Optional[_Iterable[_Union[FeatureView, _Mapping]]] = ..., feature_services: _Optional[_Iterable[_Union[FeatureService, _Mapping]]] = ...) -> None: ...
