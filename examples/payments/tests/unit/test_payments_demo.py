"""The payments demo (examples/payments): generator, streaming features, labels, events, Feast repo, CLI."""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from payments_demo import FEATURE_REPO, FRAUD_MODEL_SPEC
from payments_demo.cli import main as cli
from payments_demo.generator import (
    SCENARIOS,
    FeatureRow,
    Transaction,
    all_events,
    feature_events,
    feature_rows,
    feedback_events,
    fraud_rate,
    generate,
    label_events,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from flywheel.common.events import decode
from flywheel.common.topics import FEATURES_UPDATES, FEEDBACK_RECEIVED
from flywheel.proto.events.v1 import predictions_pb2

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
ONSET = START + timedelta(days=DAYS // 2)


@pytest.fixture(scope="module")
def runs() -> dict[str, list[Transaction]]:
    return {name: generate(name, seed=7, start=START, days=DAYS) for name in SCENARIOS}


@pytest.fixture(scope="module")
def stable(runs: dict[str, list[Transaction]]) -> list[Transaction]:
    return runs["stable"]


@pytest.fixture(scope="module")
def stable_rows(stable: list[Transaction]) -> list[FeatureRow]:
    return list(feature_rows(stable))


def after(txns: list[Transaction], at: datetime = ONSET) -> list[Transaction]:
    return [t for t in txns if t.event_time >= at]


def before(txns: list[Transaction], at: datetime = ONSET) -> list[Transaction]:
    return [t for t in txns if t.event_time < at]


# --- the generator -----------------------------------------------------------------------------------------------

def test_same_seed_same_world_other_seed_other_world(stable: list[Transaction]) -> None:
    assert generate("stable", seed=7, start=START, days=DAYS) == stable
    other = generate("stable", seed=8, start=START, days=DAYS)
    assert [t.amount for t in other[:50]] != [t.amount for t in stable[:50]]


def test_transactions_are_well_formed(stable: list[Transaction]) -> None:
    times = [t.event_time for t in stable]
    assert all(a < b for a, b in itertools.pairwise(times)), "strictly increasing event times"
    assert START <= times[0] and times[-1] < START + timedelta(days=DAYS)
    assert len({t.transaction_id for t in stable}) == len(stable)
    t = stable[0]
    assert t.transaction_id.startswith("t-20260101-") and t.customer_id.startswith("c-") and len(t.customer_id) == 7
    assert t.merchant_id.startswith("m-") and len(t.merchant_id) == 6
    assert all(x.event_time.tzinfo is not None and x.event_time.utcoffset() == timedelta(0) for x in stable)
    assert all(x.hour_of_day == x.event_time.hour and x.amount > 0 for x in stable)
    assert {x.merchant_category for x in stable} == {"grocery", "fuel", "restaurants", "electronics", "travel",
                                                     "online_gaming", "jewelry"}
    assert 9_000 * 0.9 < len(stable) < 9_000 * 1.15  # ~300 a day plus fraud


def test_fraud_rate_is_a_few_percent(runs: dict[str, list[Transaction]]) -> None:
    for name, txns in runs.items():
        assert 0.02 <= fraud_rate(txns) <= 0.05, name


def test_scenarios_share_the_world_before_their_onset(runs: dict[str, list[Transaction]]) -> None:
    base = before(runs["stable"])
    for name in ("covariate_shift", "concept_shift"):
        assert before(runs[name]) == base, name
    # label_delay changes nothing but when the labels arrive.
    strip = [dataclasses.replace(t, label_observed_at=START) for t in runs["label_delay"]]
    assert strip == [dataclasses.replace(t, label_observed_at=START) for t in runs["stable"]]


def test_covariate_shift_moves_amounts_and_merchant_mix_not_fraud(runs: dict[str, list[Transaction]]) -> None:
    stable, shifted = after(runs["stable"]), after(runs["covariate_shift"])
    assert np.median([t.amount for t in shifted]) > 1.4 * np.median([t.amount for t in stable])

    def online_share(txns: list[Transaction]) -> float:
        return float(np.mean([t.merchant_category in ("online_gaming", "electronics") for t in txns]))

    assert online_share(shifted) > 1.5 * online_share(stable)
    assert abs(fraud_rate(shifted) - fraud_rate(stable)) < 0.01  # same fraud mechanism


def test_concept_shift_brings_small_daytime_card_present_fraud(runs: dict[str, list[Transaction]]) -> None:
    def everyday_fraud_share(txns: list[Transaction]) -> float:
        segment = [t for t in txns if t.merchant_category in ("grocery", "fuel") and t.card_present
                   and not t.is_foreign and 9 <= t.hour_of_day < 19 and t.amount < 60]
        assert len(segment) > 500
        return fraud_rate(segment)

    shifted = runs["concept_shift"]
    assert everyday_fraud_share(before(shifted)) < 0.01
    assert everyday_fraud_share(after(shifted)) > 0.04
    assert everyday_fraud_share(after(runs["stable"])) < 0.01
    # The old pattern fades: fewer card-not-present frauds than on `stable`.
    cnp = [t for t in after(shifted) if t.is_fraud and not t.card_present]
    assert len(cnp) < 0.8 * len([t for t in after(runs["stable"]) if t.is_fraud and not t.card_present])


def test_label_delays_per_scenario(runs: dict[str, list[Transaction]]) -> None:
    def delays(txns: list[Transaction], fraud: bool) -> list[float]:
        return [t.label_delay / timedelta(days=1) for t in txns if t.is_fraud == fraud]

    assert 1 <= min(delays(runs["stable"], True)) and max(delays(runs["stable"], True)) <= 10
    assert 1 <= min(delays(runs["stable"], False)) and max(delays(runs["stable"], False)) <= 3
    for fraud in (True, False):
        late = delays(runs["label_delay"], fraud)
        assert 20 <= min(late) and max(late) <= 40


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        generate("nope", start=START, days=1)


# --- labels ------------------------------------------------------------------------------------------------------

def test_every_transaction_gets_exactly_one_late_label(stable: list[Transaction]) -> None:
    labels = label_events(stable)
    assert sorted(fb.request_id for fb in labels) == sorted(t.transaction_id for t in stable)
    by_id = {t.transaction_id: t for t in stable}
    observed = [fb.observed_at.ToDatetime(tzinfo=UTC) for fb in labels]
    assert observed == sorted(observed)
    for fb in labels:
        txn = by_id[fb.request_id]
        assert fb.feedback_id == f"fb-{txn.transaction_id}" and fb.entity_id == txn.transaction_id
        assert fb.source == predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH
        assert fb.label.WhichOneof("value") == "flag" and fb.label.flag == txn.is_fraud
        assert fb.event_time.ToDatetime(tzinfo=UTC) == txn.event_time
        assert fb.observed_at.ToDatetime(tzinfo=UTC) == txn.label_observed_at > txn.event_time
        assert dict(fb.entity_keys) == {"transaction_id": txn.transaction_id, "customer_id": txn.customer_id,
                                        "merchant_id": txn.merchant_id}


def test_labels_can_be_cut_at_what_is_known(stable: list[Transaction]) -> None:
    end = START + timedelta(days=DAYS)
    known = label_events(stable, observed_before=end)
    assert 0 < len(known) < len(stable)
    assert all(fb.observed_at.ToDatetime(tzinfo=UTC) < end for fb in known)


# --- streaming features ------------------------------------------------------------------------------------------

def test_rows_come_in_time_order_with_the_expected_counts(stable: list[Transaction],
                                                          stable_rows: list[FeatureRow]) -> None:
    times = [r.event_time for r in stable_rows]
    assert times == sorted(times)
    views = defaultdict(int)
    for r in stable_rows:
        views[r.view] += 1
    merchants = len({t.merchant_id for t in stable})
    assert dict(views) == {"transactions": len(stable), "customer_stats": len(stable),
                           "merchant_stats": DAYS * merchants}
    assert {r.push_source for r in stable_rows} == {"transactions_push", "customer_stats_push", "merchant_stats_push"}


def test_transactions_rows_carry_the_payment(stable: list[Transaction], stable_rows: list[FeatureRow]) -> None:
    rows = {r.entity_key: r for r in stable_rows if r.view == "transactions"}
    t = stable[123]
    row = rows[t.transaction_id]
    assert row.event_time == t.event_time
    assert row.values == {"customer_id": t.customer_id, "merchant_id": t.merchant_id, "amount": t.amount,
                          "hour_of_day": t.hour_of_day, "is_foreign": int(t.is_foreign),
                          "card_present": int(t.card_present), "merchant_category": t.merchant_category}


def test_customer_stats_are_stamped_before_the_transaction_and_use_only_its_past(
        stable: list[Transaction], stable_rows: list[FeatureRow]) -> None:
    rows = [r for r in stable_rows if r.view == "customer_stats"]
    history: dict[str, list[Transaction]] = defaultdict(list)
    for txn, row in zip(stable, rows, strict=True):  # one row per transaction, in the same order
        assert row.entity_keys == {"customer_id": txn.customer_id}
        assert row.event_time == txn.event_time - timedelta(microseconds=1) < txn.event_time
        past = history[txn.customer_id]
        day = [p.amount for p in past if p.event_time >= txn.event_time - timedelta(hours=24)]
        month = [p.amount for p in past if p.event_time >= txn.event_time - timedelta(days=30)]
        assert row.values["txn_count_24h"] == len(day)
        assert row.values["amount_sum_24h"] == pytest.approx(sum(day), abs=0.01)
        assert row.values["avg_amount_30d"] == pytest.approx(sum(month) / len(month) if month else 0.0, abs=0.01)
        past.append(txn)


def test_merchant_fraud_rate_uses_only_labels_observed_before_the_row(
        stable: list[Transaction], stable_rows: list[FeatureRow]) -> None:
    by_merchant: dict[str, list[Transaction]] = defaultdict(list)
    for t in stable:
        by_merchant[t.merchant_id].append(t)
    rows = [r for r in stable_rows if r.view == "merchant_stats"]
    assert any(r.values["fraud_rate_30d"] > 0 for r in rows)
    for row in rows:
        at, txns = row.event_time, by_merchant[row.entity_key]
        assert at == at.replace(hour=0, minute=0, second=0, microsecond=0)
        labeled = [t.is_fraud for t in txns
                   if at - timedelta(days=30) <= t.event_time < at and t.label_observed_at < at]
        assert row.values["fraud_rate_30d"] == pytest.approx(sum(labeled) / len(labeled) if labeled else 0.0)
        assert row.values["txn_count_24h"] == sum(at - timedelta(hours=24) <= t.event_time < at for t in txns)


def test_labels_observed_later_cannot_change_earlier_rows(stable: list[Transaction]) -> None:
    cut = START + timedelta(days=12)
    flipped = [dataclasses.replace(t, is_fraud=not t.is_fraud) if t.label_observed_at >= cut else t for t in stable]
    original = [r for r in feature_rows(stable) if r.event_time <= cut]
    assert [r for r in feature_rows(flipped) if r.event_time <= cut] == original


def training_frame(txns: list[Transaction]) -> tuple[np.ndarray, np.ndarray]:
    """The fraud model's inputs as a point-in-time join sees them (latest row of each entity at the time)."""
    latest: dict[tuple[str, str], dict] = {}
    labels = {t.transaction_id: t.is_fraud for t in txns}
    categories = sorted({t.merchant_category for t in txns})
    xs, ys = [], []
    for row in feature_rows(txns):
        latest[(row.view, row.entity_key)] = row.values
        if row.view != "transactions":
            continue
        v = row.values
        c, m = latest[("customer_stats", v["customer_id"])], latest[("merchant_stats", v["merchant_id"])]
        xs.append([np.log1p(v["amount"]), v["hour_of_day"], v["is_foreign"], v["card_present"], c["txn_count_24h"],
                   np.log1p(c["amount_sum_24h"]), np.log1p(c["avg_amount_30d"]), m["txn_count_24h"],
                   m["fraud_rate_30d"], np.log1p(v["amount"]) - np.log1p(c["avg_amount_30d"]),
                   float(v["hour_of_day"] < 6), *(float(v["merchant_category"] == k) for k in categories)])
        ys.append(labels[row.entity_key])
    return np.array(xs), np.array(ys)


def test_fraud_is_learnable_from_the_features(stable: list[Transaction]) -> None:
    x, y = training_frame(stable)
    cut = int(len(y) * 0.7)  # train on the past, test on the latest 30 %
    scaler = StandardScaler().fit(x[:cut])
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(scaler.transform(x[:cut]), y[:cut])
    auc = roc_auc_score(y[cut:], model.predict_proba(scaler.transform(x[cut:]))[:, 1])
    assert auc > 0.8


# --- events ------------------------------------------------------------------------------------------------------

def test_feature_events_decode_on_their_topic(stable_rows: list[FeatureRow]) -> None:
    sample = [next(r for r in stable_rows if r.view == view)
              for view in ("transactions", "customer_stats", "merchant_stats")]
    events = list(feature_events(sample))
    assert [e.id for e in feature_events(sample)] == [e.id for e in events], "ids are deterministic"
    for row, event in zip(sample, events, strict=True):
        decoded = decode(FEATURES_UPDATES, *event.encode())
        assert decoded.key == row.entity_key and decoded.id == event.id and decoded.source == "examples/payments"
        payload = decoded.payload
        assert payload.push_source == f"{row.view}_push" and payload.update_id == row.update_id
        assert dict(payload.entity_keys) == row.entity_keys
        assert payload.event_time.ToDatetime(tzinfo=UTC) == row.event_time
        for name, value in row.values.items():
            kind = {float: "double_value", int: "int64_value", str: "string_value"}[type(value)]
            assert payload.values[name].WhichOneof("value") == kind
            assert getattr(payload.values[name], kind) == value


def test_label_events_decode_on_their_topic(stable: list[Transaction]) -> None:
    labels = label_events(stable[:20])
    for fb, event in zip(labels, feedback_events(labels), strict=True):
        decoded = decode(FEEDBACK_RECEIVED, *event.encode())
        assert decoded.key == fb.request_id and decoded.payload == fb
        assert decoded.time == fb.observed_at.ToDatetime(tzinfo=UTC)


def test_all_events_merge_features_and_labels_in_world_order(stable: list[Transaction]) -> None:
    txns = stable[:300]
    events = all_events(txns)
    assert [e.time for e in events] == sorted(e.time for e in events)
    topics = defaultdict(int)
    for e in events:
        topics[e.topic.name] += 1
    assert topics["feedback.received"] == len(txns)
    assert topics["features.updates"] == len(list(feature_rows(txns)))


# --- Feast repo, model spec, CLI ---------------------------------------------------------------------------------

def test_feast_repo_defines_views_push_sources_and_the_fraud_service() -> None:
    from feast import PushSource
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from payments_demo.feature_repo import features

    views = {v.name: v for v in (features.transactions, features.customer_stats, features.merchant_stats)}
    expected = {
        "transactions": (["transaction_id"], 30, ["customer_id", "merchant_id", "amount", "hour_of_day", "is_foreign",
                                                  "card_present", "merchant_category"]),
        "customer_stats": (["customer_id"], 30, ["txn_count_24h", "amount_sum_24h", "avg_amount_30d"]),
        "merchant_stats": (["merchant_id"], 60, ["txn_count_24h", "fraud_rate_30d"]),
    }
    for name, (keys, ttl_days, feature_names) in expected.items():
        view = views[name]
        assert view.online and view.ttl == timedelta(days=ttl_days)
        assert [c.name for c in view.entity_columns] == keys
        assert [f.name for f in view.features] == feature_names
        push = view.stream_source
        assert push is not None and push.name == f"{name}_push"
        batch = push.batch_source
        assert isinstance(batch, PostgreSQLSource) and batch.get_table_query_string() == f"{name}_source"
        assert batch.timestamp_field == "event_timestamp" and batch.created_timestamp_column == "created"

    served = [f"{p.name}__{f.name}" for p in features.fraud_model_v1.feature_view_projections for f in p.features]
    spec = yaml.safe_load(FRAUD_MODEL_SPEC.read_text())
    assert features.fraud_model_v1.name == spec["features"]["feature_service"] == "fraud_model_v1"
    assert sorted(served) == sorted(spec["numeric"] + spec["categorical"])
    assert set(spec["log_transform"]) <= set(spec["numeric"])

    # Feast itself finds the same objects when it parses the repo directory.
    from feast.repo_operations import parse_repo

    repo = parse_repo(FEATURE_REPO)
    assert sorted(v.name for v in repo.feature_views) == sorted(views)
    assert sorted(s.name for s in repo.data_sources if isinstance(s, PushSource)) == sorted(f"{n}_push" for n in views)
    assert [s.name for s in repo.feature_services] == ["fraud_model_v1"]


def test_cli_help_and_dry_run() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--help"]).exit_code == 0
    result = runner.invoke(cli, ["generate", "--scenario", "concept_shift", "--days", "4", "--onset-day", "2",
                                 "--transactions-per-day", "50", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "transactions" in result.output and "dry run" in result.output and "onset" in result.output


def test_the_project_settings_point_the_services_at_its_specs_and_feature_repo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from payments_demo.project import settings

    from flywheel.predictive.spec import SpecCatalog

    values = settings()
    folder = Path(values["FLYWHEEL_TRAINER_SPECS_DIR"])
    assert values["FLYWHEEL_EVALUATOR_SPECS_DIR"] == str(folder) and folder == FRAUD_MODEL_SPEC.parent
    assert values["FLYWHEEL_FEATURESTORE_REPO"] == str(FEATURE_REPO)
    spec = SpecCatalog(folder).get("fraud")
    assert spec.features.feature_service and spec.feature_names
    assert spec.gate is not None and (spec.gate.metric, spec.gate.floor) == ("roc_auc", 0.65)
    # The monitor samples uncertain fraud scores for review; the review app calls the labels legit and fraud.
    from flywheel.monitor.config import MonitorSettings
    from flywheel.review.config import ReviewSettings

    for key in ("FLYWHEEL_MONITOR_REVIEW_POLICY", "FLYWHEEL_REVIEW_LABEL_NAMES"):
        monkeypatch.setenv(key, values[key])
    policy = MonitorSettings(kafka_bootstrap="k:9092", database_url="postgresql://x").review_policy_for("fraud")
    assert policy.rate > 0 and policy.max_per_window > 0
    assert ReviewSettings(kafka_bootstrap="k:9092", database_url="postgresql://x").labels_for("fraud") == [
        "legit", "fraud"]
    # The evaluator pushes the support assistant's golden set: valid, with answerable and refusal items.
    from flywheel.evaluator.golden import parse_golden_set

    golden = parse_golden_set((Path(values["FLYWHEEL_EVALUATOR_GOLDEN_DIR"]) / "support-assistant.yaml").read_text())
    assert golden.application == "support-assistant"
    assert golden.count("answerable") >= 20 and golden.count("refusal") >= 8
