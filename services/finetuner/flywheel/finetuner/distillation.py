"""What a run trains on (its snapshot, either mode) and what a distillation run registers.

A LoRA run's snapshot is the application's reviewed examples. A distillation run's is one item per question:
the teacher's (the champion's) answers logged for the application, where a reviewer's correction or approval
of the same question overrides the teacher's answer; split by time like the reviewed examples, copied into
`distill_snapshot_items` and named by its content hash.

The student is registered as a version of the application's model: kind LLM (served like any base LLM),
tags `distilled_from` (the teacher's version), `student_layers`, `parameters`, `eval_start`; lineage parent =
the teacher, the dataset snapshot, the run, the retrain request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from flywheel.common.errors import FailedPrecondition
from flywheel.finetuner import dataset
from flywheel.finetuner.dataset import CORRECTION, EVAL, TEACHER, TRAIN, DistillItem
from flywheel.finetuner.hyperparams import Example, LoraSettings, kept_layers
from flywheel.finetuner.models import BaseModel
from flywheel.finetuner.store import FinetunerStore, Run, StoredExample
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

# Registry tags of the versions runs register.
RUN_TAG = "run_id"
ARTIFACT_SHA_TAG = "artifact_sha256"
# ISO-8601 time of the first decision (or logged answer) of the run's eval split: nothing decided or logged at
# or after it was trained on, so an evaluator can use recent reviewed traffic without leakage.
EVAL_START_TAG = "eval_start"
DISTILLED_FROM_TAG = "distilled_from"


@dataclass
class Snapshot:
    id: str
    # The reviewed examples in it, with their split.
    splits: list[tuple[StoredExample, str]]
    # Distillation: every item it trains and evaluates on (teacher answers and reviewed ones), with its split.
    items: list[tuple[DistillItem, str]] | None = None

    def examples(self, split: str) -> list[Example]:
        if self.items is not None:
            return [Example(tuple(i.messages), i.prompt, i.target) for i, s in self.items if s == split]
        return [Example(tuple(e.messages), e.prompt, e.target) for e, s in self.splits if s == split]

    @property
    def reviews(self) -> int:
        return sum(1 + e.duplicates for e, _ in self.splits)

    @property
    def corrections(self) -> int:
        return sum(1 for e, _ in self.splits if e.kind == CORRECTION)

    @property
    def teacher_answers(self) -> int:
        return sum(1 for i, _ in self.items or [] if i.source == TEACHER)

    @property
    def eval_start(self) -> datetime | None:
        if self.items is not None:
            return dataset.eval_start([(i.at, s) for i, s in self.items])
        return dataset.eval_start([(e.decided_at, s) for e, s in self.splits])

    def counts(self) -> dict[str, int]:
        parts = self.items if self.items is not None else self.splits
        return {"train_examples": sum(1 for _, s in parts if s == TRAIN),
                "eval_examples": sum(1 for _, s in parts if s == EVAL)}


def eval_start_tag(snapshot: Snapshot) -> dict[str, str]:
    when = snapshot.eval_start
    return {EVAL_START_TAG: when.isoformat()} if when is not None else {}


async def take_distill_snapshot(store: FinetunerStore, run: Run, settings: LoraSettings, base: BaseModel,
                                cutoff: datetime) -> Snapshot:
    """The teacher's answers received until `cutoff` with the reviewed examples overriding them, split by time,
    recorded under their content hash."""
    teacher = await store.teacher_answers(run.application, base.model_name, base.parent_version, cutoff)
    reviewed = await store.examples(run.application, cutoff)
    by_review = {e.review_id: e for e in reviewed}
    items = dataset.distill_items(teacher, [DistillItem(e.kind, e.review_id, e.messages, e.prompt, e.target,
                                                        e.decided_at) for e in reviewed])
    if not teacher:
        raise FailedPrecondition(f"application {run.application!r} has no logged answers of its champion "
                                 f"{base.model_name} v{base.parent_version} (the teacher) to distill")
    splits = dataset.split_by_time(list(range(len(items))), settings.eval_fraction)
    item_splits = [(item, splits[n]) for n, item in enumerate(items)]
    reviewed_splits = [(by_review[i.ref], s) for i, s in item_splits if i.source != TEACHER]
    snapshot_id = dataset.snapshot_id(f"distill/{run.application}", [(i.key, s) for i, s in item_splits])
    await store.save_distill_snapshot(snapshot_id, run.application, item_splits, reviewed_splits)
    return Snapshot(snapshot_id, reviewed_splits, item_splits)


async def read_distill_snapshot(store: FinetunerStore, snapshot_id: str) -> Snapshot:
    _, examples = await store.snapshot(snapshot_id)
    return Snapshot(snapshot_id, [(e, e.split) for e in examples], await store.distill_snapshot(snapshot_id))


def student_spec(run: Run, base: BaseModel, teacher: reg.ModelVersion, snapshot: Snapshot, metrics: dict[str, float],
                 sha: str, code_version: str) -> reg.ModelVersionSpec:
    """The registry entry of a distilled student: a full LLM version of the application's model."""
    layers, parameters = int(metrics.get("student_layers", 0)), int(metrics.get("parameters", 0))
    teacher_layers = int(metrics.get("teacher_layers", 0))
    keep = kept_layers(teacher_layers, layers, LoraSettings().with_overrides(run.settings).student_keep)
    teacher_ref = f"{teacher.model_name}@v{teacher.version}"
    tags = {
        RUN_TAG: run.id, "application": run.application, "dataset_snapshot_id": snapshot.id,
        DISTILLED_FROM_TAG: str(teacher.version), "teacher": teacher_ref, "student_layers": str(layers),
        "teacher_layers": str(teacher_layers), "teacher_layers_kept": ",".join(map(str, keep)),
        "parameters": str(parameters),
        "teacher_parameters": str(int(metrics.get("teacher_parameters", 0))), "base": base.ref,
        "teacher_answers": str(snapshot.teacher_answers), "reviews": str(snapshot.reviews), ARTIFACT_SHA_TAG: sha,
        "format": "hf-dir-tar", "settings": json.dumps(run.settings, sort_keys=True), **eval_start_tag(snapshot)}
    lineage = common_pb2.Lineage(
        parent_version=teacher.version, training_run_id=run.id, dataset_snapshot_id=snapshot.id,
        code_version=code_version, retrain_request_id=run.retrain_request_id, drift_event_id=run.drift_event_id)
    return reg.ModelVersionSpec(
        model_name=base.model_name, kind=common_pb2.MODEL_KIND_LLM, framework="transformers",
        description=f"student of {teacher_ref} ({layers} decoder layers, {parameters:,} parameters) distilled from "
                    f"{snapshot.teacher_answers} of its answers and {snapshot.reviews} reviews of {run.application} "
                    f"(run {run.id})",
        tags=tags, metrics=metrics, lineage=lineage, expected_sha256=sha,
        filename=f"{base.model_name}-student-{run.id[:12]}.tar")
