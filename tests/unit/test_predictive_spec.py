"""Model specs (flywheel.predictive.spec): parsing with clear errors, the gate, run parameters,
the spec directory and typed entity keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.predictive.spec import (
    SpecCatalog,
    apply_params,
    entity_keys,
    load_spec,
    parse_spec,
    registry_tags,
)
from tests.service_helpers import fixture_spec

SPEC = fixture_spec("fraud")

EXAMPLE = """
name: fraud
kind: predictive
description: Card fraud score for payments
features: {feature_service: fraud_model_v1}
entity_keys: [transaction_id, customer_id, merchant_id]
label: {source: ground_truth, type: flag}
numeric: [transactions__amount, transactions__hour_of_day, transactions__is_foreign, transactions__card_present,
  customer_stats__txn_count_24h, customer_stats__amount_sum_24h, customer_stats__avg_amount_30d,
  merchant_stats__txn_count_24h, merchant_stats__fraud_rate_30d]
log_transform: [transactions__amount, customer_stats__amount_sum_24h, customer_stats__avg_amount_30d]
categorical: [transactions__merchant_category]
model: {type: mlp, hidden: [64, 32], dropout: 0.1}
training: {epochs: 40, batch_size: 256, learning_rate: 0.003, weight_decay: 0.0001, patience: 5, seed: 7,
  class_weight: balanced}
split: {validation: 0.15, test: 0.15}
calibration: temperature
threshold: max_f1
min_rows: 300
"""


def test_the_example_spec_parses() -> None:
    spec = parse_spec(yaml.safe_load(EXAMPLE))
    assert spec.name == "fraud" and spec.features.feature_service == "fraud_model_v1"
    assert spec.feature_names[-1] == "transactions__merchant_category" and len(spec.feature_names) == 10
    assert spec.training.epochs == 40 and spec.model.hidden == [64, 32]
    assert spec.split.train == pytest.approx(0.7)
    assert spec.label.source_code == 1  # FEEDBACK_SOURCE_GROUND_TRUTH


@pytest.mark.parametrize(("change", "message"), [
    ({"training": {**SPEC["training"], "epoch": 5}}, "training.epoch: Extra inputs are not permitted"),
    ({"training": {**SPEC["training"], "epochs": 0}}, "training.epochs: Input should be greater than 0"),
    ({"log_transform": ["transactions__hour"]}, "log_transform lists transactions__hour, which are not numeric"),
    ({"numeric": ["amount"]}, "numeric.0: String should match pattern"),
    ({"label": {"source": "oracle"}}, "label.source: Input should be 'ground_truth', 'reviewer' or 'end_user'"),
    ({"split": {"validation": 0.5, "test": 0.45}}, "leaves too little to train on"),
    ({"categorical": ["transactions__amount"]}, "transactions__amount listed as both numeric and categorical"),
    ({"numeric": [], "categorical": [], "log_transform": []}, "the model has no input"),
    ({"entity_keys": []}, "entity_keys: List should have at least 1 item"),
    ({"model": {"type": "xgboost"}}, "model.type: Input should be 'mlp'"),
])
def test_invalid_specs_name_the_field_at_fault(change: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=r"model spec fraud\.yaml is invalid") as error:
        parse_spec({**SPEC, **change}, "fraud.yaml")
    assert message in str(error.value)


def test_run_parameters_override_the_spec() -> None:
    spec = parse_spec(SPEC)
    changed = apply_params(spec, {"epochs": "5", "hidden": "16, 8", "learning_rate": "0.01", "threshold": "0.3",
                                  "scenario": "stable", "tag.team": "risk"})
    assert changed.training.epochs == 5 and changed.model.hidden == [16, 8]
    assert changed.training.learning_rate == 0.01 and changed.threshold == 0.3
    assert spec.training.epochs == 12  # the original is untouched
    assert registry_tags({"scenario": "stable", "tag.team": "risk", "epochs": "5"}) == {"scenario": "stable",
                                                                                       "team": "risk"}
    with pytest.raises(InvalidArgument, match=r"unknown parameter 'epoch'; known parameters: epochs, "):
        apply_params(spec, {"epoch": "5"})
    with pytest.raises(InvalidArgument, match=r"parameter epochs='many' is not a valid value"):
        apply_params(spec, {"epochs": "many"})
    with pytest.raises(InvalidArgument, match=r"training.epochs: Input should be greater than 0"):
        apply_params(spec, {"epochs": "-1"})
    with pytest.raises(InvalidArgument, match=r"not a finite number"):
        apply_params(spec, {"learning_rate": "nan"})


def test_spec_directory(tmp_path: Path) -> None:
    (tmp_path / "fraud.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    catalog = SpecCatalog(tmp_path)
    assert catalog.get("fraud").name == "fraud"
    assert catalog.names() == ["broken", "fraud", "wrong"]
    with pytest.raises(NotFound, match=r"no model spec 'churn' in .* \(known: broken, fraud, wrong\)"):
        catalog.get("churn")
    with pytest.raises(InvalidArgument, match=r"wrong.yaml names the model 'fraud'; the file must be called"):
        catalog.get("wrong")
    with pytest.raises(InvalidArgument, match=r"broken.yaml is not valid YAML"):
        catalog.get("broken")
    with pytest.raises(NotFound, match="no spec directory is configured "
                                       r"\(set FLYWHEEL_TRAINER_SPECS_DIR to a directory of <name>.yaml model specs"):
        SpecCatalog(None, "FLYWHEEL_TRAINER_SPECS_DIR").get("fraud")
    with pytest.raises(NotFound):
        catalog.get("../fraud")
    assert load_spec(tmp_path / "fraud.yaml").name == "fraud"


def test_the_gate_has_defaults_and_is_validated() -> None:
    spec = parse_spec(yaml.safe_load(EXAMPLE))
    assert (spec.gate.metric, spec.gate.tolerance, spec.gate.floor, spec.gate.max_ece) == ("roc_auc", 0.01, 0.7, None)
    gated = parse_spec({**yaml.safe_load(EXAMPLE),
                        "gate": {"metric": "pr_auc", "tolerance": 0.02, "floor": 0.3, "max_ece": 0.1}})
    assert (gated.gate.metric, gated.gate.tolerance, gated.gate.floor, gated.gate.max_ece) == ("pr_auc", 0.02, 0.3, 0.1)
    with pytest.raises(InvalidArgument, match=r"gate\.metric"):
        parse_spec({**yaml.safe_load(EXAMPLE), "gate": {"metric": "brier"}})
    with pytest.raises(InvalidArgument, match=r"gate\.tolerance"):
        parse_spec({**yaml.safe_load(EXAMPLE), "gate": {"tolerance": -0.1}})
    with pytest.raises(InvalidArgument, match=r"gate\.threshold"):
        parse_spec({**yaml.safe_load(EXAMPLE), "gate": {"threshold": 0.5}})  # a typo is an error, not ignored


@dataclass(frozen=True)
class Label:
    label_key: str
    entity_keys: dict[str, str]


def test_entity_keys_are_typed_as_the_spec_says() -> None:
    spec = parse_spec({**SPEC, "entity_key_types": {"merchant_id": "int64"}})
    label = Label("t-1", {"transaction_id": "t-1", "customer_id": "c-1", "merchant_id": "42", "other": "x"})
    assert entity_keys(spec, label) == {"transaction_id": "t-1", "customer_id": "c-1", "merchant_id": 42}
    with pytest.raises(FailedPrecondition, match=r"label t-2: entity key merchant_id='m-7' is not an integer"):
        entity_keys(spec, Label("t-2", {**label.entity_keys, "merchant_id": "m-7"}))
