"""Model specs: what to train and how to judge it, read from one YAML file per model (`<name>.yaml`).

A spec names the feature service, the entity keys, the label source, the input
features and how to train, split, calibrate and threshold; its `gate` says when a
new version may replace the champion. Run parameters may override a documented
subset of it (`apply_params`). The trainer trains from it, the evaluator judges by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.proto.events.v1 import predictions_pb2

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Feast column names of a feature service: "<view>__<feature>".
FEATURE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*__[A-Za-z0-9_]+$"

LABEL_SOURCES: dict[str, int] = {
    "ground_truth": predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH,
    "reviewer": predictions_pb2.FEEDBACK_SOURCE_REVIEWER,
    "end_user": predictions_pb2.FEEDBACK_SOURCE_END_USER,
}

FeatureName = Annotated[str, Field(pattern=FEATURE_PATTERN)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo ("epoch:") must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSource(_Strict):
    feature_service: str = Field(min_length=1, description="Feast feature service the features come from.")


class LabelSpec(_Strict):
    source: Literal["ground_truth", "reviewer", "end_user"] = Field(
        description="Which feedback.received source the labels come from.")
    type: Literal["flag"] = Field("flag", description="Binary labels (Label.flag): the model scores P(flag = true).")

    @property
    def source_code(self) -> int:
        """The FeedbackSource enum value."""
        return LABEL_SOURCES[self.source]


class ModelArchitecture(_Strict):
    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = Field(default_factory=lambda: [64, 32], max_length=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainingParams(_Strict):
    epochs: int = Field(40, gt=0, le=10_000)
    batch_size: int = Field(256, gt=0, le=1_000_000)
    learning_rate: float = Field(0.003, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0001, ge=0.0, le=10.0)
    patience: int = Field(5, gt=0, description="Epochs without a better validation loss before stopping.")
    seed: int = Field(7, ge=0, le=2**31 - 1)
    class_weight: Literal["balanced", "none"] = "balanced"


class SplitSpec(_Strict):
    """Shares of the rows, by event time: train = the oldest rest, then validation, then test (latest)."""

    validation: float = Field(0.15, gt=0.0, lt=1.0)
    test: float = Field(0.15, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError(f"validation + test = {self.validation + self.test:g} leaves too little to train on "
                             "(must be < 0.9)")
        return self

    @property
    def train(self) -> float:
        return 1.0 - self.validation - self.test


# Gate metrics: all "higher is better", so one rule (candidate >= baseline - tolerance) fits every one.
GATE_METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy")


class GateSpec(_Strict):
    """When a candidate may replace the champion (read by the evaluator, not the trainer).

    Checks: `metric` of the candidate >= the champion's - `tolerance` (skipped when there is no
    champion), >= `floor`, and, when `max_ece` is set, the candidate's ECE <= `max_ece`.
    """

    metric: Literal["roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy"] = Field(
        "roc_auc", description="The metric compared (higher is better), on the same recent labelled rows.")
    tolerance: float = Field(0.01, ge=0.0, le=1.0, description="How much worse than the champion is still fine.")
    floor: float = Field(0.7, ge=0.0, le=1.0, description="The least the candidate's metric may be, champion or not.")
    max_ece: float | None = Field(None, gt=0.0, le=1.0, description="Largest expected calibration error allowed.")


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["predictive"] = "predictive"
    description: str = ""
    features: FeatureSource
    entity_keys: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    # Join keys are strings unless said otherwise (labels carry them as text; the feature store wants the type).
    entity_key_types: dict[str, Literal["string", "int64"]] = Field(default_factory=dict)
    label: LabelSpec
    numeric: list[FeatureName] = Field(default_factory=list)
    log_transform: list[FeatureName] = Field(default_factory=list)
    categorical: list[FeatureName] = Field(default_factory=list)
    model: ModelArchitecture = Field(default_factory=ModelArchitecture)
    training: TrainingParams = Field(default_factory=TrainingParams)
    split: SplitSpec = Field(default_factory=SplitSpec)
    calibration: Literal["temperature", "none"] = "temperature"
    threshold: Literal["max_f1"] | Annotated[float, Field(gt=0.0, lt=1.0)] = "max_f1"
    min_rows: int = Field(300, gt=0)
    gate: GateSpec = Field(default_factory=GateSpec)

    @field_validator("entity_keys", "numeric", "categorical", "log_transform")
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        seen = [v for i, v in enumerate(values) if v in values[:i]]
        if seen:
            raise ValueError(f"lists {', '.join(sorted(set(seen)))} more than once")
        return values

    @model_validator(mode="after")
    def _consistent_features(self) -> ModelSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("the model has no input: list features under numeric and/or categorical")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"{', '.join(both)} listed as both numeric and categorical")
        unknown = sorted(set(self.entity_key_types) - set(self.entity_keys))
        if unknown:
            raise ValueError(f"entity_key_types names {', '.join(unknown)}, which are not entity_keys")
        stray = sorted(set(self.log_transform) - set(self.numeric))
        if stray:
            raise ValueError(f"log_transform lists {', '.join(stray)}, which are not numeric features")
        return self

    @property
    def feature_names(self) -> list[str]:
        """Every input feature, in the order the model consumes them: numeric, then categorical."""
        return [*self.numeric, *self.categorical]


# Run parameters that override the spec: name -> (path in the spec, how to parse the text).
def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(" ", "").split(",") if part]


OVERRIDES: dict[str, tuple[tuple[str, ...], Any]] = {
    "epochs": (("training", "epochs"), int),
    "batch_size": (("training", "batch_size"), int),
    "learning_rate": (("training", "learning_rate"), float),
    "weight_decay": (("training", "weight_decay"), float),
    "patience": (("training", "patience"), int),
    "seed": (("training", "seed"), int),
    "class_weight": (("training", "class_weight"), str),
    "hidden": (("model", "hidden"), _int_list),
    "dropout": (("model", "dropout"), float),
    "validation": (("split", "validation"), float),
    "test": (("split", "test"), float),
    "calibration": (("calibration",), str),
    "threshold": (("threshold",), lambda t: t if t == "max_f1" else float(t)),
    "min_rows": (("min_rows",), int),
}
# Parameters that only describe a run (recorded, and `scenario` / `tag.*` become registry tags).
METADATA_PARAMS = ("scenario", "note")
TAG_PREFIX = "tag."


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_spec(data: Any, source: str = "spec") -> ModelSpec:
    """A ModelSpec from parsed YAML; InvalidArgument naming every field at fault."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"model spec {source} must be a YAML mapping, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidArgument(f"model spec {source} is invalid: {_format_errors(exc)}") from None


def load_spec(path: Path) -> ModelSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"model spec {path.name} is not valid YAML: {exc}") from None
    spec = parse_spec(data, path.name)
    if spec.name != path.stem:
        raise InvalidArgument(f"model spec {path.name} names the model {spec.name!r}; the file must be "
                              f"called {spec.name}.yaml")
    return spec


def apply_params(spec: ModelSpec, params: Mapping[str, str]) -> ModelSpec:
    """The spec with run parameters applied; InvalidArgument for unknown keys or bad values."""
    data = spec.model_dump()
    for key, text in params.items():
        if key in METADATA_PARAMS or key.startswith(TAG_PREFIX):
            continue
        if key not in OVERRIDES:
            known = ", ".join([*OVERRIDES, *METADATA_PARAMS, TAG_PREFIX + "<name>"])
            raise InvalidArgument(f"unknown parameter {key!r}; known parameters: {known}")
        path, parse = OVERRIDES[key]
        try:
            value = parse(text)
        except ValueError:
            raise InvalidArgument(f"parameter {key}={text!r} is not a valid value") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"parameter {key}={text!r} is not a finite number")
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(f"parameters do not give a valid spec: {_format_errors(exc)}") from None


def registry_tags(params: Mapping[str, str]) -> dict[str, str]:
    """Registry tags carried by run parameters: `scenario` and every `tag.<name>`."""
    tags = {k.removeprefix(TAG_PREFIX): v for k, v in params.items() if k.startswith(TAG_PREFIX)}
    if "scenario" in params:
        tags["scenario"] = params["scenario"]
    return tags


class SpecCatalog:
    """The model specs of one directory, read on every lookup (so new specs need no restart).

    `setting` names the environment variable that configures the directory, for the message
    when none is configured.
    """

    def __init__(self, directory: Path | None, setting: str = "the specs directory setting") -> None:
        self.directory = directory
        self.setting = setting

    def get(self, name: str) -> ModelSpec:
        """The spec of model `name`: NotFound if there is none, InvalidArgument if it is broken."""
        if self.directory is None:
            raise NotFound(f"no model spec {name!r}: no spec directory is configured (set {self.setting} to a "
                           "directory of <name>.yaml model specs)")
        if not name or "/" in name or name.startswith("."):
            raise NotFound(f"no model spec {name!r}")
        for suffix in (".yaml", ".yml"):
            path = self.directory / f"{name}{suffix}"
            if path.is_file():
                return load_spec(path)
        known = ", ".join(self.names()) or "none"
        raise NotFound(f"no model spec {name!r} in {self.directory} (known: {known})")

    def names(self) -> list[str]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted({p.stem for p in self.directory.iterdir() if p.suffix in (".yaml", ".yml")})


class LabelledRow(Protocol):
    """A label as a service stores it: what names the judged row, and the row's entity keys as text."""

    @property
    def label_key(self) -> str: ...

    @property
    def entity_keys(self) -> Mapping[str, str]: ...


def entity_keys(spec: ModelSpec, label: LabelledRow) -> dict[str, str | int]:
    """The spec's join keys of a label, typed as the spec says (text unless int64).

    FailedPrecondition when a key that must be an integer is not one.
    """
    keys: dict[str, str | int] = {}
    for key in spec.entity_keys:
        text = label.entity_keys[key]
        if spec.entity_key_types.get(key) == "int64":
            try:
                keys[key] = int(text)
            except ValueError:
                raise FailedPrecondition(f"label {label.label_key}: entity key {key}={text!r} is not an integer "
                                         "(entity_key_types says int64)") from None
        else:
            keys[key] = text
    return keys
