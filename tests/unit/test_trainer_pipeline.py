"""The trainer's pure pipeline on a synthetic DataFrame: determinism, time split,
preprocessing fitted on train only, calibration, metrics, reference profile and the
TorchScript artifact."""

from __future__ import annotations

import io
import json
import math
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk

from flywheel.trainer import metrics as m
from flywheel.trainer.artifact import MODEL_JSON, MODEL_PT, PROFILE_JSON, build_artifact, load_model, read_artifact
from flywheel.trainer.pipeline import TrainingDataError, fit_temperature, snapshot_id, split_by_time, train
from flywheel.trainer.profile import reference_profile
from flywheel.trainer.spec import ModelSpec, apply_params, parse_spec

NUMERIC = ["transactions__amount", "transactions__hour_of_day", "transactions__is_foreign",
           "transactions__card_present", "customer_stats__txn_count_24h", "customer_stats__amount_sum_24h",
           "customer_stats__avg_amount_30d", "merchant_stats__txn_count_24h", "merchant_stats__fraud_rate_30d"]
CATEGORY = "transactions__merchant_category"
SPEC = {
    "name": "fraud", "kind": "predictive", "description": "Card fraud score for payments",
    "features": {"feature_service": "fraud_model_v1"},
    "entity_keys": ["transaction_id", "customer_id", "merchant_id"],
    "label": {"source": "ground_truth", "type": "flag"},
    "numeric": NUMERIC,
    "log_transform": ["transactions__amount", "customer_stats__amount_sum_24h", "customer_stats__avg_amount_30d"],
    "categorical": [CATEGORY],
    "model": {"type": "mlp", "hidden": [32, 16], "dropout": 0.1},
    "training": {"epochs": 12, "batch_size": 256, "learning_rate": 0.003, "weight_decay": 0.0001, "patience": 4,
                 "seed": 7, "class_weight": "balanced"},
    "split": {"validation": 0.15, "test": 0.15},
    "calibration": "temperature", "threshold": "max_f1", "min_rows": 300,
}


def spec(**params: str) -> ModelSpec:
    return apply_params(parse_spec(SPEC), params)


def synthetic(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Payments whose fraud depends on amount vs. habit, abroad, card not present, category and night."""
    r = np.random.default_rng(seed)
    amount = r.lognormal(3.5, 1.0, rows)
    hour = r.integers(0, 24, rows)
    foreign = (r.random(rows) < 0.1).astype(int)
    present = (r.random(rows) < 0.7).astype(int)
    count = r.poisson(3, rows)
    habit = r.lognormal(3.5, 0.5, rows)
    category = r.choice(["grocery", "travel", "electronics", "fuel", "online_gaming"], rows,
                        p=[0.3, 0.1, 0.2, 0.2, 0.2])
    merchant_rate = r.beta(1, 50, rows)
    z = (-4.0 + 1.2 * np.log(amount / habit) + 1.5 * foreign - 1.0 * present + 0.3 * (count - 3)
         + 0.9 * (category == "electronics") + 20 * merchant_rate + 0.8 * (hour < 5))
    label = r.random(rows) < 1 / (1 + np.exp(-z))
    frame = pd.DataFrame({
        "transaction_id": [f"t-{i:05d}" for i in range(rows)],
        "customer_id": [f"c-{i % 97:03d}" for i in range(rows)],
        "merchant_id": [f"m-{i % 13:02d}" for i in range(rows)],
        "event_time": pd.date_range("2026-01-01", periods=rows, freq="7min", tz="UTC"),
        "label": label,
        "transactions__amount": amount, "transactions__hour_of_day": hour, "transactions__is_foreign": foreign,
        "transactions__card_present": present, "customer_stats__txn_count_24h": count,
        "customer_stats__amount_sum_24h": amount * count, "customer_stats__avg_amount_30d": habit,
        "merchant_stats__txn_count_24h": r.poisson(50, rows), "merchant_stats__fraud_rate_30d": merchant_rate,
        CATEGORY: category,
    })
    frame.loc[r.random(rows) < 0.05, "customer_stats__avg_amount_30d"] = np.nan
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic()


@pytest.fixture(scope="module")
def trained(frame: pd.DataFrame):  # type: ignore[no-untyped-def]
    return train(frame, spec())


def test_training_learns_and_reports_test_metrics(trained) -> None:  # type: ignore[no-untyped-def]
    metrics = trained.metrics
    assert set(metrics) >= {"roc_auc", "pr_auc", "f1", "precision", "recall", "ece", "brier", "positive_rate", "rows"}
    assert metrics["roc_auc"] > 0.75
    assert metrics["rows"] == len(trained.splits.test) == 450
    assert 0 < metrics["ece"] < 0.1 and 0 < metrics["brier"] < 0.1
    assert 0 < trained.threshold < 1
    assert trained.epochs and trained.epochs[0].epoch == 1
    assert all(math.isfinite(e.train_loss) and math.isfinite(e.validation_loss) for e in trained.epochs)
    assert 1 <= trained.best_epoch <= len(trained.epochs)


def test_same_seed_gives_identical_metrics_and_state_dict(frame: pd.DataFrame, trained) -> None:  # type: ignore[no-untyped-def]
    again = train(frame, spec())
    assert again.metrics == trained.metrics
    assert again.epochs == trained.epochs
    assert again.threshold == trained.threshold and again.temperature == trained.temperature
    first, second = trained.module.state_dict(), again.module.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    other = train(frame, spec(seed="8"))
    assert not all(torch.equal(first[k], other.module.state_dict()[k]) for k in first)


def test_split_is_by_event_time_oldest_train_latest_test(frame: pd.DataFrame) -> None:
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    trained = train(shuffled, spec(epochs="2"))
    train_part, val, test = trained.splits.train, trained.splits.validation, trained.splits.test
    assert (len(train_part), len(val), len(test)) == (2100, 450, 450)
    assert train_part["event_time"].max() < val["event_time"].min()
    assert val["event_time"].max() < test["event_time"].min()
    assert test["event_time"].max() == frame["event_time"].max()


def test_preprocessing_is_fit_on_the_training_slice_only(frame: pd.DataFrame) -> None:
    base = spec(epochs="2")
    splits = split_by_time(frame, base)
    first = train(frame, base).preprocessing
    # Change everything after the training slice: amounts explode, a new category appears, values go missing.
    changed = frame.copy()
    later = changed["event_time"] > splits.train["event_time"].max()
    changed.loc[later, "transactions__amount"] *= 1000
    changed.loc[later, CATEGORY] = "brand_new_category"
    changed.loc[later, "merchant_stats__txn_count_24h"] = np.nan
    second = train(changed, base).preprocessing
    assert second == first
    assert "brand_new_category" not in second.vocab[CATEGORY]
    assert "merchant_stats__txn_count_24h" not in second.missing_indicator
    # The imputed value is the training median (in log space for log-transformed features).
    habit = np.log1p(splits.train["customer_stats__avg_amount_30d"].dropna())
    index = second.numeric.index("customer_stats__avg_amount_30d")
    assert second.median[index] == pytest.approx(float(np.median(habit)))
    assert second.missing_indicator == ["customer_stats__avg_amount_30d"]


def test_temperature_scaling_improves_or_keeps_validation_nll(trained) -> None:  # type: ignore[no-untyped-def]
    assert trained.nll_after_calibration <= trained.nll_before_calibration + 1e-12

    r = np.random.default_rng(1)
    true_logits = r.normal(0, 2, 5000)
    y = (r.random(5000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident, y)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = m.log_loss(y, 1 / (1 + np.exp(-overconfident)))
    after = m.log_loss(y, 1 / (1 + np.exp(-overconfident / temperature)))
    assert after < before
    # Already calibrated logits: T stays near 1 and never makes things worse.
    calibrated = fit_temperature(true_logits, y)
    assert calibrated == pytest.approx(1.0, abs=0.1)


def test_expected_calibration_error_on_known_cases() -> None:
    assert m.expected_calibration_error(np.array([0] * 9 + [1]), np.full(10, 0.1)) == pytest.approx(0.0)
    assert m.expected_calibration_error(np.array([1] * 5 + [0] * 5), np.full(10, 0.9)) == pytest.approx(0.4)
    # Two bins, half the rows each: |0 - 0.2| / 2 + |0.5 - 0.8| / 2.
    y, p = np.array([0, 0, 1, 0]), np.array([0.2, 0.2, 0.8, 0.8])
    assert m.expected_calibration_error(y, p) == pytest.approx(0.25)
    # Probability 1.0 falls in the last bin.
    assert m.expected_calibration_error(np.array([1, 1]), np.array([1.0, 1.0])) == pytest.approx(0.0)


def test_metrics_agree_with_scikit_learn() -> None:
    r = np.random.default_rng(5)
    y = (r.random(400) < 0.2).astype(int)
    score = np.round(r.random(400) * 0.6 + 0.4 * y * r.random(400), 2)  # rounded: plenty of ties
    assert m.roc_auc(y, score) == pytest.approx(sk.roc_auc_score(y, score))
    assert m.average_precision(y, score) == pytest.approx(sk.average_precision_score(y, score))
    threshold = m.max_f1_threshold(y, score)
    assert m.confusion(y, score, threshold)["f1"] == pytest.approx(
        max(sk.f1_score(y, score >= t) for t in np.unique(score)))
    assert m.brier(y, score) == pytest.approx(sk.brier_score_loss(y, score))


def test_one_class_is_a_clear_error(frame: pd.DataFrame) -> None:
    with pytest.raises(TrainingDataError, match=r"only one class: all 3000 labels are false"):
        train(frame.assign(label=False), spec())
    # Both classes overall, but none in the test slice (the latest 15 %).
    late_clean = frame.copy()
    late_clean.loc[late_clean.index >= 2550, "label"] = False
    with pytest.raises(TrainingDataError, match=r"the test slice .* has only one class"):
        train(late_clean, spec())


def test_bad_training_sets_fail_with_the_reason(frame: pd.DataFrame) -> None:
    with pytest.raises(TrainingDataError, match=r"only 200 labelled rows .* min_rows = 300"):
        train(frame.head(200), spec())
    with pytest.raises(TrainingDataError, match=r"merchant_stats__fraud_rate_30d have no values .* \(all null\)"):
        train(frame.assign(merchant_stats__fraud_rate_30d=np.nan), spec())
    with pytest.raises(TrainingDataError, match=r"no column\(s\) transactions__amount"):
        train(frame.drop(columns=["transactions__amount"]), spec())
    with pytest.raises(TrainingDataError, match=r"no labelled rows"):
        train(frame.assign(label=None), spec())


def test_torchscript_artifact_scores_like_the_in_memory_model(frame: pd.DataFrame, trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = spec()
    profile = reference_profile(trained.splits.train, s.numeric, s.categorical)
    data = build_artifact(trained, s, profile, run_id="run-1", extra={"dataset_snapshot_id": "abc"})
    path = tmp_path / "fraud.tar.gz"
    path.write_bytes(data)

    with tarfile.open(path) as tar:
        assert tar.getnames() == [MODEL_JSON, MODEL_PT, PROFILE_JSON]
    model = load_model(path)
    assert model.name == "fraud" and model.metadata["run_id"] == "run-1"
    assert model.feature_names == [*NUMERIC, CATEGORY]
    assert model.threshold == trained.threshold
    assert model.metadata["dataset_snapshot_id"] == "abc"

    rows = {f: frame[f].tolist() for f in model.feature_names}
    expected = trained.predict_proba(frame)
    np.testing.assert_array_equal(model.predict_proba(rows), expected)
    assert ((expected > 0) & (expected < 1)).all()

    # Missing values and unknown categories score (imputed / "other") instead of failing.
    odd = {f: [None, float("nan")] for f in NUMERIC} | {CATEGORY: ["never_seen", None]}
    probabilities = model.predict_proba(odd)
    assert probabilities.shape == (2,) and np.isfinite(probabilities).all()
    with pytest.raises(ValueError, match="missing feature column"):
        model.predict_proba({"transactions__amount": [1.0]})

    # model.pt alone, with nothing but torch.jit.load and the schema in model.json.
    members = read_artifact(data)
    schema = json.loads(members[MODEL_JSON])["input_schema"]
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is what serving loads
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(members[MODEL_PT]))
    numeric = torch.tensor(frame[schema["numeric"]["features"]].to_numpy(dtype=np.float32))
    vocab = schema["categorical"]["vocab"][CATEGORY]
    other = schema["categorical"]["other_index"][CATEGORY]
    categorical = torch.tensor([[vocab.index(c) if c in vocab else other] for c in frame[CATEGORY]])
    with torch.no_grad():
        direct = module(numeric, categorical).numpy()
    np.testing.assert_allclose(direct, expected, rtol=0, atol=1e-7)
    # An out-of-range index (e.g. -1) also means "other".
    with torch.no_grad():
        minus_one = module(numeric[:3], torch.full((3, 1), -1))
        as_other = module(numeric[:3], torch.full((3, 1), other))
    assert torch.equal(minus_one, as_other)


def test_reference_profile(trained) -> None:  # type: ignore[no-untyped-def]
    s = spec()
    train_rows = trained.splits.train
    profile = reference_profile(train_rows, s.numeric, s.categorical, sample_rows=500)
    json.dumps(profile, allow_nan=False)
    assert profile["rows"] == len(train_rows)
    assert profile["label_rate"] == pytest.approx(train_rows["label"].mean())
    amount = profile["numeric"]["transactions__amount"]
    assert list(amount["quantiles"]) == [f"{q / 20:.2f}" for q in range(21)]
    assert amount["quantiles"]["0.50"] == pytest.approx(train_rows["transactions__amount"].median())
    assert len(amount["histogram"]["bins"]) == len(amount["histogram"]["counts"]) + 1
    assert sum(amount["histogram"]["counts"]) == len(train_rows)
    assert amount["mean"] == pytest.approx(train_rows["transactions__amount"].mean())
    habit = profile["numeric"]["customer_stats__avg_amount_30d"]
    assert habit["missing_share"] == pytest.approx(train_rows["customer_stats__avg_amount_30d"].isna().mean())
    categories = profile["categorical"][CATEGORY]["frequencies"]
    assert sum(categories.values()) == pytest.approx(1.0)
    assert categories["grocery"] == pytest.approx((train_rows[CATEGORY] == "grocery").mean())
    sample = profile["sample"]
    assert sample["rows"] == 500 and all(len(v) == 500 for v in sample["columns"].values())
    assert set(sample["columns"]) == {*s.feature_names, "label", "event_time"}
    assert profile["prediction"] is None


def test_reference_profile_carries_the_models_predictions(trained) -> None:  # type: ignore[no-untyped-def]
    s = spec()
    profile = reference_profile(trained.splits.train, s.numeric, s.categorical, sample_rows=300,
                                score=trained.predict_proba)
    columns = profile["sample"]["columns"]
    rows = pd.DataFrame({f: columns[f] for f in s.feature_names})
    assert columns["prediction"] == pytest.approx(trained.predict_proba(rows).tolist())
    assert profile["prediction"]["count"] == 300
    assert 0.0 <= profile["prediction"]["min"] <= profile["prediction"]["max"] <= 1.0


def test_snapshot_id_is_stable_and_sensitive(frame: pd.DataFrame) -> None:
    columns = ["transaction_id", "event_time", "label", *NUMERIC, CATEGORY]
    first = snapshot_id(frame, columns)
    assert first == snapshot_id(frame.copy(), columns) and len(first) == 64
    changed = frame.copy()
    changed.loc[10, "transactions__amount"] += 0.01
    assert snapshot_id(changed, columns) != first
