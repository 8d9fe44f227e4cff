"""The `flywheel.predictive/v1` artifact (one writer, one reader), the feature encoding every consumer
shares, and scoring any artifact through its input schema (flywheel.predictive.artifact, .encoding, .scoring)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from flywheel.predictive.artifact import (
    MODEL_FORMAT,
    MODEL_JSON,
    MODEL_PT,
    PROFILE_JSON,
    InputSchema,
    read_artifact,
    write_artifact,
)
from flywheel.predictive.encoding import category_indices, category_key, numeric_column, numeric_matrix
from flywheel.predictive.scoring import load_model, to_torchscript

SCHEMA = InputSchema(["v__a", "v__b"], ["v__c"], {"v__c": ["x", "y"]})


def tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_what_is_written_reads_back() -> None:
    profile = {"rows": 3, "label_rate": math.nan, "numeric": {"v__a": {"mean": np.float32(1.5)}}}
    data = write_artifact(name="fraud", schema=SCHEMA, model_pt=b"torchscript", threshold=0.25, profile=profile,
                          metadata={"run_id": "r-1", "metrics": {"roc_auc": 0.9, "ece": math.inf, "note": "x"}})
    assert data == write_artifact(name="fraud", schema=SCHEMA, model_pt=b"torchscript", threshold=0.25,
                                  profile=profile, metadata={"run_id": "r-1", "metrics": {"roc_auc": 0.9,
                                                                                         "ece": math.inf,
                                                                                         "note": "x"}})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [MODEL_JSON, MODEL_PT, PROFILE_JSON]
        assert all(m.mtime == 0 for m in tar.getmembers())

    artifact = read_artifact(data)
    meta = artifact.metadata
    assert meta["format"] == MODEL_FORMAT and meta["model_name"] == artifact.name == "fraud"
    assert meta["run_id"] == "r-1" and meta["feature_names"] == ["v__a", "v__b", "v__c"]
    assert meta["input_schema"]["categorical"]["other_index"] == {"v__c": 2}
    assert meta["files"][MODEL_PT] == hashlib.sha256(b"torchscript").hexdigest()
    assert artifact.schema == SCHEMA and artifact.threshold == 0.25 and artifact.model_pt == b"torchscript"
    assert artifact.metrics == {"roc_auc": 0.9}  # null (was inf) and text are not metrics
    assert artifact.profile == {"rows": 3, "label_rate": None, "numeric": {"v__a": {"mean": 1.5}}}

    without = read_artifact(data, with_model=False)
    assert without.model_pt is None and without.metadata == meta


def test_the_reader_refuses_what_is_not_an_artifact() -> None:
    meta = {"format": MODEL_FORMAT, "input_schema": SCHEMA.to_json()}
    only_json = tar_gz({MODEL_JSON: json.dumps(meta).encode()})
    with pytest.raises(ValueError, match=r"artifact lacks model\.pt"):
        read_artifact(only_json)
    # Readers that never score need no model.pt; a missing profile reads as an empty one.
    assert read_artifact(only_json, with_model=False).profile == {}
    with pytest.raises(ValueError, match=r"not a flywheel\.predictive/v1 artifact \(format 'other/v2'\)"):
        read_artifact(tar_gz({MODEL_JSON: json.dumps({**meta, "format": "other/v2"}).encode(), MODEL_PT: b""}))
    with pytest.raises(ValueError, match="no input_schema"):
        read_artifact(tar_gz({MODEL_JSON: json.dumps({"format": MODEL_FORMAT}).encode(), MODEL_PT: b""}))
    with pytest.raises(ValueError, match=r"artifact lacks model\.json"):
        read_artifact(tar_gz({"README": b"hello"}))


def test_raw_values_become_model_inputs() -> None:
    got = numeric_column([1, None, "2.5", True, math.inf, "n/a"])
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == 2.5 and got[3] == 1.0
    assert math.isnan(got[4]) and math.isnan(got[5]) and got.dtype == np.float64
    series = numeric_column(pd.Series([1, None, 3], dtype="Int64"))
    assert series[0] == 1.0 and math.isnan(series[1]) and series[2] == 3.0
    assert numeric_column(pd.Series(["4", None], dtype=object)).tolist()[0] == 4.0
    assert [category_key(v) for v in (None, math.nan, pd.NA, 7, "x")] == [None, None, None, "7", "x"]

    columns = {"v__a": [1.0, None], "v__b": [0, 2], "v__c": ["y", "never seen"]}
    matrix = numeric_matrix(columns, SCHEMA)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 2) and math.isnan(matrix[1, 0])
    assert category_indices(columns, SCHEMA).tolist() == [[1], [2]]  # unknown -> other (len(vocab))
    assert category_indices({"v__c": [None]}, SCHEMA).tolist() == [[2]]


class _Tiny(nn.Module):
    """P = sigmoid(sum of numeric (missing = 0) - 0.5 * category index)."""

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = torch.where(torch.isfinite(numeric), numeric, torch.zeros_like(numeric)).sum(1)
        return torch.sigmoid(x - 0.5 * categorical.to(torch.float32).sum(1))


def test_any_artifact_scores_through_its_input_schema() -> None:
    data = write_artifact(name="tiny", schema=SCHEMA, model_pt=to_torchscript(_Tiny()), threshold=0.3)
    model = load_model(data)
    assert model.feature_names == ["v__a", "v__b", "v__c"] and model.threshold == 0.3 and model.name == "tiny"
    p = model.predict_proba({"v__a": [1.0, None, 3.0], "v__b": [0, 1, 2], "v__c": ["x", "zz", None]})
    expected = 1 / (1 + np.exp(-np.array([1.0 - 0.0, 1.0 - 1.0, 5.0 - 1.0])))
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert p.dtype == np.float64 and model.predict({"v__a": [-5.0], "v__b": [0], "v__c": ["x"]}).tolist() == [False]
    scored = model.score(np.array([[1.0, 0.0]], dtype=np.float32), np.array([[-1]], dtype=np.int64))
    assert scored.dtype == np.float32 and scored.shape == (1,)
    with pytest.raises(ValueError, match=r"missing feature column\(s\): v__b"):
        model.predict_proba({"v__a": [1.0], "v__c": ["x"]})
    with pytest.raises(ValueError, match="differ in length"):
        model.predict_proba({"v__a": [1.0], "v__b": [1, 2], "v__c": ["x"]})
    with pytest.raises(ValueError, match=r"without model\.pt"):
        type(model)(read_artifact(data, with_model=False))
