"""Measurements of the guard on the shipped held-out data: the detectors' table (from `training`) and
the PII rail's span-level precision / recall per kind on data/pii.jsonl (the rules are not trained, so
the whole file is held out). A found span counts as correct when it has the right kind and overlaps
the labelled span; names are also reported split into listed (in libs/flywheel/common/pii_first_names.txt) and not."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flywheel.common import pii
from flywheel.guard.training import DATA_DIR, read_jsonl

Finder = Callable[[str], Iterable[tuple[str, int, int]]]


def guard_finder(text: str) -> list[tuple[str, int, int]]:
    return [(s.kind, s.start, s.end) for s in pii.find_pii(text)]


def pii_metrics(finder: Finder = guard_finder, data_dir: Path = DATA_DIR,
                kinds: Iterable[str] = pii.KINDS) -> dict[str, Any]:
    """Per kind: true positives, false positives, false negatives, precision, recall; plus `all`."""
    wanted = set(kinds)
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    name_split = {True: [0, 0], False: [0, 0]}  # listed -> [found, total]
    for row in read_jsonl(data_dir / "pii.jsonl"):
        labelled = [(s["kind"], s["start"], s["end"]) for s in row["spans"] if s["kind"] in wanted]
        found = [f for f in finder(row["text"]) if f[0] in wanted]
        matched: set[int] = set()
        for kind, start, end in found:
            hit = next((i for i, (k, s, e) in enumerate(labelled)
                        if i not in matched and k == kind and start < e and s < end), None)
            if hit is None:
                fp[kind] += 1
            else:
                matched.add(hit)
                tp[kind] += 1
        for i, (kind, _, _) in enumerate(labelled):
            if i not in matched:
                fn[kind] += 1
            if kind == "name":
                listed = bool(row.get("listed_name"))
                name_split[listed][1] += 1
                name_split[listed][0] += i in matched
    out: dict[str, Any] = {}
    for kind in [k for k in pii.KINDS if k in wanted] + ["all"]:
        t = sum(tp.values()) if kind == "all" else tp[kind]
        f = sum(fp.values()) if kind == "all" else fp[kind]
        n = sum(fn.values()) if kind == "all" else fn[kind]
        out[kind] = {"precision": round(t / (t + f), 4) if t + f else 1.0,
                     "recall": round(t / (t + n), 4) if t + n else 1.0, "tp": t, "fp": f, "fn": n}
    if "name" in wanted:
        out["name_recall_listed"] = round(name_split[True][0] / max(1, name_split[True][1]), 4)
        out["name_recall_unlisted"] = round(name_split[False][0] / max(1, name_split[False][1]), 4)
    return out
