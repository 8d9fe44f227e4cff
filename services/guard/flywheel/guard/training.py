"""Training and held-out evaluation of the guard's detectors, on the data the project ships in
`flywheel/guard/data/` (or another directory of the same files, e.g. with reviewer labels added).

- Classifier heads (injection, toxicity, investment_advice, other_customer_data): logistic regression
  on hashed n-gram features, class-balanced, one per head, trained on the rows labelled for that head.
  Its regularisation (C in CHOICES) and decision threshold (0.3..0.8) are the pair with the best F1 on
  5-fold out-of-fold predictions of the training split: the test split is never used to choose.
- Groundedness: logistic regression on the lexical support features of `grounding.py`.
- Evaluation: precision / recall / F1 per head on the test split (written separately from the
  training messages), the false positive rate of every head on the benign messages of the test split
  (own card, fees, disputes, angry-but-civil complaints, allowed product questions, policy answers),
  and groundedness precision / recall. PII rules are evaluated by `evaluation.py`.

Blocking (numpy + scikit-learn): call it in a worker thread from async code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from flywheel.common import grounding
from flywheel.guard import features, signals
from flywheel.guard.detectors import HEADS, Detectors

DATA_DIR = Path(__file__).parent / "data"
BITS = 18
# Sources of the benign messages the false positive rate is measured on.
BENIGN_SOURCES = frozenset({"benign", "civil_complaint", "investment_allowed", "own_data_allowed", "policy_answer"})
SEED = 13


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def data_sha256(data_dir: Path) -> str:
    """One digest over the training files (what a version was trained on)."""
    digest = hashlib.sha256()
    for name in ("classify.jsonl", "grounding.jsonl"):
        digest.update(name.encode() + b"\0" + (data_dir / name).read_bytes())
    return digest.hexdigest()


def matrix(texts: list[str], bits: int) -> sparse.csr_matrix:
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        idx, v = features.hashed(text, bits)
        rows.append(np.full(len(idx), i))
        cols.append(idx)
        vals.append(v)
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(texts), 1 << bits), dtype=np.float32)


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    best, best_f1 = 0.5, -1.0
    for t in np.arange(0.3, 0.81, 0.05):
        pred = p >= t
        tp = float(np.sum(pred & (y == 1)))
        f1 = 2 * tp / max(1.0, float(np.sum(pred)) + float(np.sum(y == 1)))
        if f1 > best_f1 + 1e-9:
            best, best_f1 = float(round(t, 2)), f1
    return best


def _model(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=1000, random_state=SEED)


def out_of_fold(x: Any, y: np.ndarray, c: float) -> np.ndarray:
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    p = np.zeros(len(y))
    for train, test in folds.split(np.zeros(len(y)), y):
        p[test] = _model(c).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return p


def grounding_matrix(rows: list[dict[str, Any]]) -> np.ndarray:
    out = []
    for r in rows:
        answer = r["answer"]
        parts = [answer[s:e] for s, e in grounding.sentences(answer)]
        out.append(grounding.judge(parts, r["chunks"]).features)
    return np.array(out)


CHOICES = (1.0, 3.0, 10.0, 30.0)


def f1_at(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    return 2 * tp / max(1.0, float(np.sum(pred)) + float(np.sum(y == 1)))


def choose(x: Any, y: np.ndarray) -> tuple[float, float]:
    """(C, threshold) with the best out-of-fold F1 (ties: the stronger regularisation)."""
    best = (0.0, CHOICES[0], 0.5)
    for c in CHOICES:
        p = out_of_fold(x, y, c)
        threshold = best_threshold(y, p)
        score = f1_at(y, p, threshold)
        if score > best[0] + 1e-9:
            best = (score, c, threshold)
    return best[1], best[2]


def train(data_dir: Path = DATA_DIR, *, bits: int = BITS) -> Detectors:
    """Train every detector on the training split; the held-out metrics go into `metrics`."""
    classify = [r for r in read_jsonl(data_dir / "classify.jsonl") if r["split"] == "train"]
    x_all = matrix([r["text"] for r in classify], bits)
    weights = np.zeros((len(HEADS), 1 << bits), dtype=np.float32)
    biases = np.zeros(len(HEADS), dtype=np.float32)
    thresholds: dict[str, float] = {}
    chosen: dict[str, float] = {}
    for i, head in enumerate(HEADS):
        keep = np.array([r["labels"][head] is not None for r in classify])
        y = np.array([r["labels"][head] or 0 for r in classify])[keep]
        x = x_all[keep]
        c, thresholds[head] = choose(x, y)
        chosen[head] = c
        model = _model(c).fit(x, y)
        weights[i] = model.coef_[0]
        biases[i] = model.intercept_[0]
    ground = [r for r in read_jsonl(data_dir / "grounding.jsonl") if r["split"] == "train"]
    gx, gy = grounding_matrix(ground), np.array([r["ungrounded"] for r in ground])
    g_threshold = best_threshold(gy, out_of_fold(gx, gy, 1.0))
    g_model = _model(1.0).fit(gx, gy)
    detectors = Detectors(bits=bits, heads=HEADS, weights=weights, biases=biases, thresholds=thresholds,
                          grounding_coef=g_model.coef_[0].astype(np.float64),
                          grounding_bias=float(g_model.intercept_[0]), grounding_threshold=g_threshold)
    detectors.metrics = {"held_out": evaluate(detectors, data_dir), "data_sha256": data_sha256(data_dir),
                         "train_rows": len(classify), "regularisation_c": chosen, "grounding_train_rows": len(ground)}
    return detectors


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def as_metrics(self) -> dict[str, float]:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                "positives": self.tp + self.fn, "negatives": self.fp + self.tn}


def counts(y: list[int], pred: list[bool]) -> Counts:
    tp = sum(1 for a, b in zip(y, pred, strict=True) if a and b)
    fp = sum(1 for a, b in zip(y, pred, strict=True) if not a and b)
    fn = sum(1 for a, b in zip(y, pred, strict=True) if a and not b)
    return Counts(tp, fp, fn, len(y) - tp - fp - fn)


def evaluate(detectors: Detectors, data_dir: Path = DATA_DIR, split: str = "test") -> dict[str, Any]:
    """Per head precision / recall / F1 at the detectors' thresholds (detector and rules together, as a
    check scores), false positive rates on the benign messages, and groundedness precision / recall,
    on `split`."""
    rows = [r for r in read_jsonl(data_dir / "classify.jsonl") if r["split"] == split]
    # The rails' scores: the detector and the rules together (what a check sees).
    scored = [signals.signals(detectors, r["text"]).scores for r in rows]
    result: dict[str, Any] = {"heads": {}, "benign_messages": 0, "benign_false_positive_rate": {}}
    for head in HEADS:
        pairs = [(r["labels"][head], s[head] >= detectors.thresholds[head])
                 for r, s in zip(rows, scored, strict=True) if r["labels"][head] is not None]
        result["heads"][head] = counts([p[0] for p in pairs], [p[1] for p in pairs]).as_metrics()
    benign = [s for r, s in zip(rows, scored, strict=True) if r["source"] in BENIGN_SOURCES]
    result["benign_messages"] = len(benign)
    for head in HEADS:
        flagged = sum(1 for s in benign if s[head] >= detectors.thresholds[head])
        result["benign_false_positive_rate"][head] = round(flagged / max(1, len(benign)), 4)
    flagged_any = sum(1 for s in benign if any(s[h] >= detectors.thresholds[h] for h in HEADS))
    result["benign_false_positive_rate"]["any"] = round(flagged_any / max(1, len(benign)), 4)
    ground = [r for r in read_jsonl(data_dir / "grounding.jsonl") if r["split"] == split]
    preds = []
    for r in ground:
        answer = r["answer"]
        parts = [answer[s:e] for s, e in grounding.sentences(answer)]
        preds.append(detectors.ungrounded(parts, r["chunks"])[0] >= detectors.grounding_threshold)
    result["groundedness"] = counts([r["ungrounded"] for r in ground], preds).as_metrics()
    return result
