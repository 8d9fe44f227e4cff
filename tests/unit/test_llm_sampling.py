"""Sampling without a model: seeded reproducibility, top-p, stop strings across token boundaries and
incremental detokenisation of multi-byte text (with the tiny byte-level BPE tokenizer)."""

from __future__ import annotations

import pytest
import torch

from flywheel.common.errors import InvalidArgument
from flywheel.inference.llm.sampling import IncrementalDecoder, SamplingParams, StopMatcher, TokenSampler
from flywheel.inference.testing import build_tiny_tokenizer


def draws(params: SamplingParams, rows: list[torch.Tensor]) -> list[int]:
    sampler = TokenSampler(params)
    return [sampler.pick(r) for r in rows]


def test_a_seed_gives_the_same_tokens_and_another_seed_others() -> None:
    torch.manual_seed(0)
    rows = [torch.randn(500) for _ in range(40)]
    a = draws(SamplingParams(temperature=1.0, seed=7), rows)
    assert a == draws(SamplingParams(temperature=1.0, seed=7), rows)
    assert a != draws(SamplingParams(temperature=1.0, seed=8), rows)
    assert draws(SamplingParams(temperature=0.7, top_p=0.9, seed=3), rows) == \
        draws(SamplingParams(temperature=0.7, top_p=0.9, seed=3), rows)


def test_temperature_zero_is_argmax() -> None:
    torch.manual_seed(1)
    rows = [torch.randn(100) for _ in range(20)]
    assert draws(SamplingParams(temperature=0.0), rows) == [int(r.argmax()) for r in rows]


def test_top_p_keeps_only_the_nucleus() -> None:
    probs = torch.tensor([0.6, 0.3, 0.05, 0.03, 0.02])
    logits = probs.log()
    seen = set(draws(SamplingParams(temperature=1.0, top_p=0.5, seed=1), [logits] * 200))
    assert seen == {0}
    seen = set(draws(SamplingParams(temperature=1.0, top_p=0.85, seed=1), [logits] * 400))
    assert seen == {0, 1}
    seen = set(draws(SamplingParams(temperature=1.0, top_p=1.0, seed=1), [logits] * 2000))
    assert seen == {0, 1, 2, 3, 4}


def test_sampled_frequencies_follow_the_distribution() -> None:
    logits = torch.tensor([0.7, 0.2, 0.1]).log()
    picks = draws(SamplingParams(temperature=1.0, seed=5), [logits] * 3000)
    share = picks.count(0) / len(picks)
    assert 0.65 < share < 0.75


@pytest.mark.parametrize("params, words", [
    (SamplingParams(temperature=3.0), "temperature"),
    (SamplingParams(top_p=0.0), "top_p"),
    (SamplingParams(max_tokens=0), "max_tokens"),
    (SamplingParams(stop=("a", "b", "c", "d", "e")), "stop"),
    (SamplingParams(stop=("",)), "stop"),
    (SamplingParams(seed=2**70), "seed"),
])
def test_bad_parameters_are_named(params: SamplingParams, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        params.validate()


def feed_all(stops: tuple[str, ...], deltas: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for d in deltas:
        text, stopped = matcher.feed(d)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_a_stop_string_split_across_tokens_is_found_and_never_emitted() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("Hello S") == ("Hello ", False)  # "S" might start the stop string: held back
    assert matcher.feed("T") == ("", False)
    assert matcher.feed("OP and more") == ("", True)
    assert feed_all(("STOP",), ["Hel", "lo ST", "OP more"]) == ("Hello ", True)
    assert feed_all(("\n\n", "User:"), ["a", "\n", "\n", "b"]) == ("a", True)
    assert feed_all(("User:",), ["Us", "e", "r", ":"]) == ("", True)


def test_a_false_start_of_a_stop_string_is_released() -> None:
    assert feed_all(("STOP",), ["a ST", "ART b"]) == ("a START b", False)
    assert feed_all(("STOP",), ["end S"]) == ("end S", False)  # flushed at the end
    assert feed_all((), ["x", "y"]) == ("xy", False)


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert feed_all(("bb", "ab"), ["xa", "bb"]) == ("x", True)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


@pytest.mark.parametrize("text", ["日本語のテキスト 🙂 Café crème, naïve résumé", "The bank refunds card payments.",
                                  "Zürich 🙂🙂 São Paulo"])
def test_incremental_decoding_matches_a_full_decode_without_broken_characters(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # word pieces and multi-byte characters span tokens
    prompt = tokenizer.encode("hello world", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, prompt)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some tokens add no text on their own (a partial character)


def test_an_unfinished_character_at_the_end_is_flushed_as_a_replacement(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode("ok 🙂", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    text = "".join(decoder.push(i) for i in ids[:-1])
    assert "\ufffd" not in text
    assert decoder.flush().endswith("\ufffd")


def test_a_nul_token_never_reaches_the_stream(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL cannot store U+0000 (caches, logs, reviews, datasets): a model that emits it gets it dropped."""
    ids = tokenizer.encode("ok\x00 fine\x00", add_special_tokens=False)
    assert "\x00" in tokenizer.decode(ids)
    decoder = IncrementalDecoder(tokenizer)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == "ok fine"
