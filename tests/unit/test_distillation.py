"""Distillation's pure parts: which logged answers are the teacher's, the reviewed ones overriding them,
eval_start, and the student cut from a tiny model (its weights, its size, an exact resume)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from flywheel.common.errors import InvalidArgument
from flywheel.finetuner import dataset
from flywheel.finetuner.dataset import EVAL, TRAIN, DistillItem
from flywheel.finetuner.hyperparams import Example, LoraSettings
from flywheel.finetuner.lora import Interrupted, load_base
from flywheel.proto.events.v1 import common_pb2, predictions_pb2

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def logged(*, arm: int = predictions_pb2.PREDICTION_ARM_CHAMPION, finish: str = "stop", application: str = "app",
           completion: str = "Within 60 days.", cache_hit: bool = False) -> predictions_pb2.PredictionLogged:
    message = predictions_pb2.PredictionLogged(
        request_id="r1", model=common_pb2.ModelRef(name="m", version=3), arm=arm,  # type: ignore[arg-type]
        llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="system", content="Be brief."),
                      predictions_pb2.ChatMessage(role="user", content="Mail me at jane.doe@example.com, fee?"),
                      predictions_pb2.ChatMessage(role="assistant", content=completion)],
            completion=completion, finish_reason=finish, application=application, cache_hit=cache_hit))
    message.timestamp.FromDatetime(T0)
    return message


def test_only_the_champions_finished_answers_of_an_application_are_the_teachers() -> None:
    answer = dataset.teacher_answer(logged(), T0 + timedelta(hours=1))
    assert answer is not None and (answer.application, answer.model_name, answer.model_version) == ("app", "m", 3)
    assert answer.messages == [("system", "Be brief."), ("user", "Mail me at [EMAIL], fee?")]  # answer turn dropped
    assert answer.completion == "Within 60 days." and answer.logged_at == T0 and answer.redactions["email"] == 1
    assert answer.question_key == dataset.example_key(answer.messages, "", "")
    for skipped in (logged(arm=predictions_pb2.PREDICTION_ARM_EVALUATION),
                    logged(arm=predictions_pb2.PREDICTION_ARM_CHALLENGER),
                    logged(arm=predictions_pb2.PREDICTION_ARM_SHADOW), logged(finish="refusal"),
                    logged(finish="content_filter"), logged(finish="length"), logged(application=""),
                    logged(completion="  "), logged(cache_hit=True), predictions_pb2.PredictionLogged(request_id="p")):
        assert dataset.teacher_answer(skipped, T0) is None, skipped


def item(source: str, ref: str, question: str, target: str, minute: int) -> DistillItem:
    return DistillItem(source, ref, [("user", question)], "", target, T0 + timedelta(minutes=minute))


def test_a_reviewed_answer_overrides_the_teachers_and_eval_start_bounds_what_was_trained_on() -> None:
    teacher = [item("teacher", "r1", "fee?", "15 EUR.", 1), item("teacher", "r2", "fee?", "Free.", 2),
               item("teacher", "r3", "limit?", "1000 EUR.", 3), item("teacher", "r4", "pin?", "In the app.", 4)]
    reviewed = [item("correction", "v1", "limit?", "2000 EUR.", 0)]
    items = dataset.distill_items(teacher, reviewed)
    assert [(i.ref, i.target) for i in items] == [("v1", "2000 EUR."), ("r2", "Free."), ("r4", "In the app.")]
    splits = dataset.split_by_time(list(range(len(items))), 0.34)
    timed = [(i.at, splits[n]) for n, i in enumerate(items)]
    assert [s for _, s in timed] == [TRAIN, TRAIN, EVAL]
    assert dataset.eval_start(timed) == T0 + timedelta(minutes=4)
    # A tie with the last trained item, or no eval split: just after the last trained one.
    assert dataset.eval_start([(T0, TRAIN), (T0, EVAL)]) == T0 + timedelta(microseconds=1)
    assert dataset.eval_start([(T0, TRAIN)]) == T0 + timedelta(microseconds=1)
    assert dataset.eval_start([]) is None


def test_mode_and_student_layers_are_run_settings() -> None:
    settings = LoraSettings().with_overrides({"mode": "Distill", "student_layers": "3", "student_keep": "first"})
    assert (settings.mode, settings.student_layers, settings.student_keep) == ("distill", 3, "first")
    with pytest.raises(InvalidArgument, match="student_keep must be one of ends, first"):
        LoraSettings().with_overrides({"student_keep": "middle"})
    with pytest.raises(InvalidArgument, match="mode must be one of lora, distill"):
        LoraSettings().with_overrides({"mode": "prune"})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel.inference.testing import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "base", seed=3, layers=3)


def test_the_student_is_the_teachers_first_layers(teacher: Path) -> None:
    from flywheel.finetuner.hyperparams import kept_layers, student_layer_count
    from flywheel.finetuner.student import cut, parameter_count

    model, _ = load_base(teacher)
    student = cut(model, [0, 2])  # the bottom and the top layer: the middle one is dropped
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    kept, source = student.state_dict(), model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in source.items() if ".layers." not in k)
    assert all(torch.equal(kept[k], source[k]) for k in kept if ".layers.0." in k)
    assert all(torch.equal(kept[k], source[k.replace(".layers.1.", ".layers.2.")]) for k in kept if ".layers.1." in k)
    assert parameter_count(student) < parameter_count(model)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    assert (student_layer_count(30, 0), student_layer_count(3, 0), student_layer_count(3, 2)) == (15, 1, 2)
    assert kept_layers(30, 15) == [0, 1, 2, 3, 4, *range(20, 30)] and kept_layers(30, 4, "first") == [0, 1, 2, 3]
    assert kept_layers(2, 1) == [0] and kept_layers(3, 2) == [0, 2]
    with pytest.raises(InvalidArgument, match="student_layers=3 is not fewer than the teacher's 3"):
        student_layer_count(3, 3)


def test_a_distillation_interrupted_after_a_checkpoint_resumes_to_the_same_student(teacher: Path,
                                                                                   tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from flywheel.finetuner.student import distill_student

    data = [Example((("user", f"question {i}"),), "", "Within 60 days.") for i in range(6)]
    settings = LoraSettings(epochs=2, learning_rate=1e-2, batch_size=2, checkpoint_every=2, mode="distill")
    whole = distill_student(teacher, data[:5], data[5:], settings, checkpoints=tmp_path / "c1",
                            out_dir=tmp_path / "s1", fingerprint="run")
    with pytest.raises(Interrupted):
        distill_student(teacher, data[:5], data[5:], settings, checkpoints=tmp_path / "c2", out_dir=tmp_path / "s2",
                        fingerprint="run", stop_after_step=4)
    resumed = distill_student(teacher, data[:5], data[5:], settings, checkpoints=tmp_path / "c2",
                              out_dir=tmp_path / "s2", fingerprint="run")
    assert (whole.steps, resumed.steps, resumed.resumed_from_step) == (6, 6, 4)
    a, b = load_file(str(tmp_path / "s1" / "model.safetensors")), load_file(str(tmp_path / "s2" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = whole.metrics()
    assert metrics["student_layers"] == 1 and metrics["teacher_layers"] == 3 and metrics["parameter_ratio"] < 1
    assert metrics["eval_loss"] < metrics["eval_loss_base"] and "eval_loss_teacher" in metrics
    assert {p.name for p in (tmp_path / "s1").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
