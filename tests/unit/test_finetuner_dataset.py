"""The fine-tuner's dataset rules and its LoRA core on a tiny model built from a config: targets of each
decision, redaction before anything is kept, the dedup key, the time split, the snapshot hash, the chat
template encoding with the loss on the answer only, settings overrides, and a run interrupted after a
checkpoint that resumes to the same adapter as an uninterrupted one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from flywheel.common.errors import FailedPrecondition, InvalidArgument
from flywheel.finetuner import dataset
from flywheel.finetuner.lora import IGNORE, Example, Interrupted, LoraSettings, encode_example, load_base, train_lora
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def requested(question: str, answer: str, application: str = "assistant") -> reviews_pb2.ReviewRequested:
    return reviews_pb2.ReviewRequested(
        review_id="r-1", request_id="q-1", model=common_pb2.ModelRef(name="smol", version=2),
        llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="system", content="Be brief."),
                      predictions_pb2.ChatMessage(role="user", content=question)],
            prompt="rendered", completion=answer, application=application))


def completed(decision: int, corrected: str = "") -> dataset.Decision:
    message = reviews_pb2.ReviewCompleted(review_id="r-1", request_id="q-1", decision=decision,  # type: ignore[arg-type]
                                          corrected_completion=corrected)
    message.completed_at.FromDatetime(NOW)
    return dataset.decision(message, NOW)


def test_each_decision_gives_its_target() -> None:
    item = dataset.review_item(requested("Fee?", "5 EUR."))
    assert item is not None and item.application == "assistant" and item.model_name == "smol"
    assert item.messages == [("system", "Be brief."), ("user", "Fee?")]
    corrected = dataset.example_row(item, completed(reviews_pb2.REVIEW_DECISION_CORRECTED, " Free. "))
    approved = dataset.example_row(item, completed(reviews_pb2.REVIEW_DECISION_APPROVED))
    assert corrected is not None and (corrected.kind, corrected.target) == (dataset.CORRECTION, "Free.")
    assert approved is not None and (approved.kind, approved.target) == (dataset.APPROVAL, "5 EUR.")
    assert corrected.decided_at == NOW
    assert dataset.example_row(item, completed(reviews_pb2.REVIEW_DECISION_REJECTED)) is None
    assert dataset.example_row(item, completed(reviews_pb2.REVIEW_DECISION_CORRECTED, "  ")) is None


def test_items_without_an_answer_are_not_kept_and_the_model_names_the_dataset_without_an_application() -> None:
    assert dataset.review_item(reviews_pb2.ReviewRequested(review_id="r-2")) is None
    item = dataset.review_item(requested("Fee?", "5 EUR.", application=""))
    assert item is not None and item.application == "smol"
    nameless = requested("Fee?", "5 EUR.", application="")
    nameless.model.name = ""
    assert dataset.review_item(nameless) is None  # no dataset it could belong to


def test_pii_is_redacted_before_it_is_kept() -> None:
    item = dataset.review_item(requested("Card 4111 1111 1111 1111 blocked, mail a@b.io", "Call 030 1234 5678."))
    made = completed(reviews_pb2.REVIEW_DECISION_CORRECTED, "Write to help@bank.example.")
    assert item is not None
    assert item.messages[-1] == ("user", "Card [CARD_NUMBER] blocked, mail [EMAIL]")
    assert item.completion == "Call [PHONE]." and made.corrected == "Write to [EMAIL]."
    assert dict(item.redactions) == {"card_number": 1, "email": 1, "phone": 1} and dict(made.redactions) == {"email": 1}


def test_the_dedup_key_is_the_conversation_and_the_target() -> None:
    key = dataset.example_key([("user", "Fee?")], "", "Free.")
    assert key == dataset.example_key([("user", " Fee? ")], "other rendering", "Free.")  # whitespace, prompt unused
    assert key != dataset.example_key([("user", "Fee?")], "", "5 EUR.")
    assert key != dataset.example_key([("system", "x"), ("user", "Fee?")], "", "Free.")
    assert dataset.example_key([], "p1", "t") != dataset.example_key([], "p2", "t")  # no messages: the prompt


@pytest.mark.parametrize(("n", "fraction", "evals"), [(0, 0.2, 0), (1, 0.2, 0), (2, 0.2, 1), (10, 0.2, 2),
                                                       (10, 0.0, 0), (3, 0.9, 2)])
def test_the_split_holds_out_the_latest(n: int, fraction: float, evals: int) -> None:
    splits = dataset.split_by_time(list(range(n)), fraction)
    assert [i for i in range(n) if splits[i] == dataset.EVAL] == list(range(n - evals, n))


def test_the_snapshot_id_is_a_content_hash() -> None:
    one = dataset.snapshot_id("a", [("k1", "train"), ("k2", "eval")])
    assert one == dataset.snapshot_id("a", [("k1", "train"), ("k2", "eval")]) and len(one) == 64
    assert one != dataset.snapshot_id("a", [("k1", "train"), ("k2", "train")])
    assert one != dataset.snapshot_id("b", [("k1", "train"), ("k2", "eval")])


def test_settings_overrides_are_checked() -> None:
    settings = LoraSettings().with_overrides({"rank": "16", "target_modules": "q_proj, v_proj", "epochs": "2"})
    assert (settings.rank, settings.target_modules, settings.epochs) == (16, ("q_proj", "v_proj"), 2)
    assert LoraSettings.with_overrides(settings, {}).to_strings()["target_modules"] == "q_proj,v_proj"
    for overrides, message in (({"rnak": "1"}, "unknown fine-tuning setting 'rnak'"),
                               ({"rank": "x"}, "rank='x' is not a int"), ({"rank": "0"}, "rank must be >= 1"),
                               ({"eval_fraction": "1"}, "eval_fraction must be in"),
                               ({"target_modules": ""}, "target_modules is empty")):
        with pytest.raises(InvalidArgument, match=message):
            LoraSettings().with_overrides(overrides)


# -- the LoRA core on a tiny model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel.inference.testing import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "base", seed=3)


def test_encoding_uses_the_chat_template_and_labels_the_answer_only(base: Path) -> None:
    _, tokenizer = load_base(base)
    example = Example((("system", "Be brief."), ("user", "Fee?")), "", "Free of charge.")
    encoded = encode_example(tokenizer, example, 256)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Fee?"}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    answer = [t for t in encoded.labels if t != IGNORE]
    assert encoded.input_ids[:len(prompt)] == list(prompt) and encoded.labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert tokenizer.decode(answer) == "Free of charge.<|im_end|>"  # the end of the turn, not what follows it
    short = encode_example(tokenizer, example, len(answer) + 3)  # the prompt loses its start, the answer stays
    assert short.truncated and short.input_ids == encoded.input_ids[-len(answer) - 3:]
    assert short.labels == [IGNORE] * 3 + answer
    tiny = encode_example(tokenizer, example, 8)  # not even the answer fits: one prompt token, the answer cut
    assert tiny.input_ids == [prompt[-1], *answer[:7]] and tiny.labels == [IGNORE, *answer[:7]]
    raw = encode_example(tokenizer, Example((), "Q: fee? A:", " Free."), 64)
    assert tokenizer.decode([t for t in raw.labels if t != IGNORE]) == " Free.<|im_end|>"


def test_a_run_interrupted_after_a_checkpoint_resumes_to_the_same_adapter(base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    questions = ["How long to dispute?", "Dispute deadline?", "Days to dispute a payment?", "Until when?",
                 "Time limit for disputes?", "Can I still dispute?"]
    data = [Example((("user", q),), "", "Within 60 days.") for q in questions]
    settings = LoraSettings(rank=4, alpha=8, dropout=0.1, epochs=3, learning_rate=1e-2, batch_size=2,
                            checkpoint_every=2, target_modules=("q_proj", "v_proj", "o_proj"))
    whole = train_lora(base, data[:5], data[5:], settings, checkpoints=tmp_path / "c1", out_dir=tmp_path / "a1",
                       fingerprint="run")
    with pytest.raises(Interrupted):
        train_lora(base, data[:5], data[5:], settings, checkpoints=tmp_path / "c2", out_dir=tmp_path / "a2",
                   fingerprint="run", stop_after_step=4)
    resumed = train_lora(base, data[:5], data[5:], settings, checkpoints=tmp_path / "c2", out_dir=tmp_path / "a2",
                         fingerprint="run")
    assert (whole.steps, whole.resumed_from_step, resumed.steps, resumed.resumed_from_step) == (9, 0, 9, 4)
    a = load_file(str(tmp_path / "a1" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "a2" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # dropout and batch order included
    assert resumed.epochs == whole.epochs and resumed.eval_loss == whole.eval_loss
    assert whole.eval_loss is not None and whole.eval_loss_base is not None and whole.eval_loss < whole.eval_loss_base
    # A checkpoint of another run (fingerprint) is not resumed from.
    other = train_lora(base, data[:5], data[5:], settings, checkpoints=tmp_path / "c2", out_dir=tmp_path / "a3",
                       fingerprint="another run")
    assert other.resumed_from_step == 0


def test_a_run_without_examples_or_with_unknown_layers_fails_clearly(base: Path, tmp_path: Path) -> None:
    data = [Example((("user", "q"),), "", "a")]
    with pytest.raises(FailedPrecondition, match="no training examples"):
        train_lora(base, [], data, LoraSettings(), checkpoints=tmp_path / "c", out_dir=tmp_path / "a", fingerprint="f")
    with pytest.raises(InvalidArgument, match="target_modules c_attn not in the base model; its linear layers: "):
        train_lora(base, data, [], LoraSettings(target_modules=("c_attn",)), checkpoints=tmp_path / "c",
                   out_dir=tmp_path / "a", fingerprint="f")
