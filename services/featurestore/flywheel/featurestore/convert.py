"""Conversions between Flywheel's wire types (FeatureValue, FeatureSelection, timestamps) and what Feast
takes and returns (Python values typed by the feature's Feast type, Feast Value protos, field statuses).

A value of the wrong type is an InvalidArgument naming the field; a value is never silently coerced,
except an int64 for a float feature (widening, exact below 2**53).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.Value_pb2 import Value as FeastValue
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.errors import InvalidArgument
from flywheel.featurestore.catalog import Selection
from flywheel.proto.events.v1.features_pb2 import FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb

INT32_RANGE = (-(2**31), 2**31 - 1)
FLOATS = (ValueType.DOUBLE, ValueType.FLOAT)
INTS = (ValueType.INT64, ValueType.INT32)
# What FeatureValue variant each Feast type takes (for messages).
EXPECTED = {
    ValueType.DOUBLE: "double_value (or int64_value)", ValueType.FLOAT: "double_value (or int64_value)",
    ValueType.INT64: "int64_value", ValueType.INT32: "int64_value (32-bit range)",
    ValueType.STRING: "string_value", ValueType.BOOL: "bool_value",
    ValueType.UNIX_TIMESTAMP: "int64_value (Unix seconds)",
}


def selection(message: pb.FeatureSelection) -> Selection:
    kind = message.WhichOneof("selection")
    if kind == "feature_service":
        if not message.feature_service:
            raise InvalidArgument("features.feature_service must not be empty")
        return Selection(feature_service=message.feature_service)
    if kind == "features":
        return Selection(refs=tuple(message.features.refs))
    raise InvalidArgument("features: set feature_service or features.refs")


# -- wire -> Python (typed by the Feast type) ------------------------------------------------------------


def python_value(value: FeatureValue, value_type: ValueType, where: str, *, nullable: bool = True) -> Any:
    """The Python value Feast expects for a feature (or key) of `value_type`; InvalidArgument names `where`."""
    kind = value.WhichOneof("value")
    if kind is None:
        if nullable:
            return None
        raise InvalidArgument(f"{where} must not be null (expected {EXPECTED.get(value_type, value_type.name)})")
    if value_type in FLOATS:
        if kind == "double_value":
            return value.double_value
        if kind == "int64_value":
            return float(value.int64_value)
    elif value_type in INTS:
        if kind == "int64_value":
            number = value.int64_value
            if value_type == ValueType.INT32 and not INT32_RANGE[0] <= number <= INT32_RANGE[1]:
                raise InvalidArgument(f"{where} = {number} does not fit the feature's Int32 type")
            return number
    elif value_type == ValueType.STRING:
        if kind == "string_value":
            return value.string_value
    elif value_type == ValueType.BOOL:
        if kind == "bool_value":
            return value.bool_value
    elif value_type == ValueType.UNIX_TIMESTAMP:
        if kind == "int64_value":
            return datetime.fromtimestamp(value.int64_value, UTC)
    else:
        raise InvalidArgument(f"{where}: Feast type {value_type.name} cannot be sent as a FeatureValue")
    raise InvalidArgument(f"{where} must be {EXPECTED[value_type]} for Feast type {type_name(value_type)}, "
                          f"got {kind}")


def key_from_text(text: str, value_type: ValueType, where: str) -> Any:
    """A join key carried as a string (in features.updates events) as the key's own type."""
    if value_type == ValueType.STRING:
        return text
    if value_type in INTS:
        try:
            number = int(text)
        except ValueError:
            raise InvalidArgument(f"{where} = {text!r} is not an integer (the join key is {type_name(value_type)})"
                                  ) from None
        if value_type == ValueType.INT32 and not INT32_RANGE[0] <= number <= INT32_RANGE[1]:
            raise InvalidArgument(f"{where} = {number} does not fit the join key's Int32 type")
        return number
    raise InvalidArgument(f"{where}: join keys of type {type_name(value_type)} cannot be sent as text")


def type_name(value_type: ValueType) -> str:
    return {ValueType.DOUBLE: "Float64", ValueType.FLOAT: "Float32", ValueType.INT64: "Int64",
            ValueType.INT32: "Int32", ValueType.STRING: "String", ValueType.BOOL: "Bool",
            ValueType.UNIX_TIMESTAMP: "UnixTimestamp"}.get(value_type, value_type.name)


# -- Feast -> wire --------------------------------------------------------------------------------------

NULL = FeatureValue()

# Feast Value field -> the FeatureValue field that carries it.
FEATURE_VALUE_FIELD = {"double_val": "double_value", "float_val": "double_value", "int64_val": "int64_value",
                       "int32_val": "int64_value", "string_val": "string_value", "bool_val": "bool_value",
                       "unix_timestamp_val": "int64_value"}


def feast_column(values: Iterable[FeastValue]) -> list[tuple[str, Any] | None]:
    """Feast Values as (FeatureValue field, value) pairs, None for null: set on a message with setattr,
    which is cheaper than building FeatureValue messages and copying them into the response."""
    out: list[tuple[str, Any] | None] = []
    for value in values:
        kind = value.WhichOneof("val")
        field = FEATURE_VALUE_FIELD.get(kind) if kind else None
        out.append((field, getattr(value, kind)) if field else None)  # type: ignore[arg-type]
    return out


def from_python(value: Any) -> FeatureValue:
    """A scalar from a historical retrieval (Arrow -> Python) as a FeatureValue."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return FeatureValue(bool_value=value)
    if isinstance(value, int):
        return FeatureValue(int64_value=value)
    if isinstance(value, float):
        return NULL if value != value else FeatureValue(double_value=value)  # NaN is Feast's null for floats
    if isinstance(value, str):
        return FeatureValue(string_value=value)
    if isinstance(value, datetime):
        return FeatureValue(int64_value=int(value.timestamp()))
    return NULL


STATUS = {
    FieldStatus.PRESENT: pb.FEATURE_STATUS_PRESENT,
    # The entity has a row and the stored value is null: present, with a null value.
    FieldStatus.NULL_VALUE: pb.FEATURE_STATUS_PRESENT,
    FieldStatus.NOT_FOUND: pb.FEATURE_STATUS_NOT_FOUND,
    FieldStatus.OUTSIDE_MAX_AGE: pb.FEATURE_STATUS_OUTSIDE_MAX_AGE,
}


def status(field_status: int) -> int:
    return STATUS.get(field_status, pb.FEATURE_STATUS_UNSPECIFIED)  # type: ignore[call-overload]


# -- timestamps ------------------------------------------------------------------------------------------


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def to_timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    return ts
