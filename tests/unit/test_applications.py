"""Applications in inference without a broker or a database: definitions parsed from JSON, the grounding rule and
how passages are fitted into the model's context (a word-level stand-in for the tokenizer), request parameters over
the template's defaults, and the generation log's event."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from flywheel.common.errors import InvalidArgument, NotFound, Unavailable
from flywheel.common.prompt_templates import parse_prompt_template
from flywheel.inference.apps.domain import Application, PromptRef, Retrieval, parse_application
from flywheel.inference.apps.grounding import GroundedAnswers, with_defaults
from flywheel.inference.apps.prompts import ResolvedPrompt
from flywheel.inference.genlog import GenerationLog, GenerationRecord, Price
from flywheel.inference.llm.sampling import SamplingParams
from flywheel.inference.llm.service import ServedModel
from flywheel.proto.events.v1 import predictions_pb2

SPEC = {"prompt": "support@champion", "model": "tiny", "guard_policy": "bank",
        "retrieval": {"collection": "docs", "tenant": "acme", "k": 3, "min_similarity": 0.3,
                      "weights": {"vector": 1, "text": 0.5}, "filter": {"tags_any": ["cards"]}}}


def test_an_application_round_trips_through_json() -> None:
    app = parse_application("assistant", SPEC)
    assert app.prompt == PromptRef("support", "champion") and app.model == "tiny" and app.guard_policy == "bank"
    assert app.retrieval == Retrieval("docs", "acme", 3, (1.0, 0.5), 0, {"tags_any": ["cards"]}, 0.3)
    assert parse_application("assistant", app.spec()) == app
    assert parse_application("assistant", {**app.to_json(), "description": "x"}).description == "x"
    defaults = parse_application("a", {"prompt": {"name": "p"}, "model": "m", "retrieval": {"collection": "c"}})
    assert defaults.prompt.alias == "champion" and defaults.retrieval.k == 4
    assert defaults.retrieval.min_similarity == 0.25 and defaults.retrieval.weights is None


@pytest.mark.parametrize("change, message", [
    ({"prompt": None}, "prompt must be"),
    ({"prompt": "p@Champion"}, "prompt.alias"),
    ({"model": ""}, "model is required"),
    ({"model": "bad name"}, "model 'bad name'"),
    ({"retrieval": {}}, "retrieval.collection is required"),
    ({"retrieval": {"collection": "c", "k": 51}}, "retrieval.k"),
    ({"retrieval": {"collection": "c", "weights": {"vector": 0, "text": 0}}}, "not both 0"),
    ({"retrieval": {"collection": "c", "filter": {"pages": ["1"]}}}, "retrieval.filter.pages"),
    ({"retrieval": {"collection": "c", "min_similarity": "high"}}, "retrieval.min_similarity must be a number"),
    ({"retrieval": {"collection": "c", "top": 1}}, "retrieval: unknown key"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"id": "other"}, "differs from the name"),
])
def test_bad_definitions_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_application("assistant", {**SPEC, **change})
    with pytest.raises(InvalidArgument, match="application name"):
        parse_application("-no", SPEC)


def test_request_parameters_win_over_the_template_defaults() -> None:
    defaults = {"temperature": 0.2, "max_tokens": 50, "stop": ["###"]}
    params = with_defaults(SamplingParams(temperature=1.0, max_tokens=None), {"temperature"}, defaults)
    assert (params.temperature, params.max_tokens, params.stop) == (1.0, 50, ("###",))
    assert with_defaults(SamplingParams(), set(), {}) == SamplingParams()


# -- the grounding use case over stand-ins: a word is a token ------------------------------------------------


class Words:
    """A tokenizer stand-in: one token per word; special words mark the chat template."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def decode(self, ids: list[int], **options: Any) -> str:
        return " ".join(f"w{i}" for i in ids)


class FakeLLM:
    def __init__(self, context: int) -> None:
        self.served = ServedModel("tiny", 3, "llm", "tiny", 3, context, "none", 0.0)
        self.tokens = Words()

    def model(self, name: str) -> ServedModel:
        if name != "tiny":
            raise NotFound(name)
        return self.served

    def chat_prompt(self, name: str, messages: list[dict[str, str]], version: int = 0) -> list[int]:
        return list(range(sum(len(m["content"].split()) + 2 for m in messages)))  # 2 tokens of markup a turn

    def encode(self, name: str, text: str, version: int = 0) -> list[int]:
        return list(range(len(text.split())))

    def tokenizer(self, name: str, version: int = 0) -> Any:
        return self.tokens


@dataclass
class Hit:
    chunk_id: str
    similarity: float
    text: str = "alpha beta gamma delta"
    document_id: str = "doc"
    title: str = "Doc"
    source: str = "doc.md"
    section: str = ""
    score: float = 0.01


@dataclass
class Response:
    chunks: list[Hit]
    embedding_model: Any = None

    def HasField(self, name: str) -> bool:  # the protobuf method
        return False


@dataclass
class FakeRetriever:
    hits: list[Hit]
    asked: list[dict[str, Any]] = field(default_factory=list)

    async def retrieve(self, collection: str, **kwargs: Any) -> Response:
        self.asked.append({"collection": collection, **kwargs})
        return Response(list(self.hits))


class FakeCatalog:
    def __init__(self, app: Application) -> None:
        self.app = app

    def require(self, name: str) -> Application:
        if name != self.app.name:
            raise NotFound(name)
        return self.app

    def get(self, name: str) -> Application | None:
        return self.app if name == self.app.name else None


class FakePrompts:
    def __init__(self, text: str) -> None:
        self.template = parse_prompt_template(text)

    async def resolve(self, name: str, alias: str) -> ResolvedPrompt:
        return ResolvedPrompt(name, 2, self.template)


TEMPLATE = """
system: Answer from the passages.
template: "{context} Q: {question}"
context_item: "[{n}] {text}"
context_separator: " "
refusal: Not in our documents.
parameters: {temperature: 0.3, max_tokens: 10}
"""


def answers(hits: list[Hit], *, context: int = 100, min_similarity: float = 0.3) -> tuple[GroundedAnswers,
                                                                                          FakeRetriever]:
    app = parse_application("assistant", {**SPEC, "model": "tiny",
                                          "retrieval": {**SPEC["retrieval"], "min_similarity": min_similarity}})
    retriever = FakeRetriever(hits)
    return GroundedAnswers(FakeCatalog(app), FakePrompts(TEMPLATE), retriever, FakeLLM(context),  # type: ignore[arg-type]
                           answer_tokens=20), retriever


QUESTION = [{"role": "user", "content": "what does it cost"}]


async def test_no_passage_at_the_threshold_means_the_refusal() -> None:
    service, retriever = answers([Hit("a", 0.29), Hit("b", 0.1)])
    call = await service.prepare("assistant", QUESTION, SamplingParams())
    assert call.refused and call.refusal == "Not in our documents." and not call.citations and not call.prompt_ids
    assert call.best_similarity == 0.29 and call.prompt.version == 2
    asked = retriever.asked[0]
    assert (asked["collection"], asked["tenant"], asked["k"], asked["weights"]) == ("docs", "acme", 3, (1.0, 0.5))
    assert list(asked["filter"].tags_any) == ["cards"] and asked["text"] == "what does it cost"
    none, _ = answers([])
    assert (await none.prepare("assistant", QUESTION, SamplingParams())).refused


async def test_supporting_passages_are_cited_in_prompt_order_and_the_others_left_out() -> None:
    service, _ = answers([Hit("a", 0.5), Hit("b", 0.2), Hit("c", 0.3)])
    call = await service.prepare("assistant", QUESTION, SamplingParams(), given={"temperature"})
    assert not call.refused and [c.chunk_id for c in call.citations] == ["a", "c"]
    assert [c.index for c in call.citations] == [1, 2]
    user = call.messages[-1]["content"]
    assert user == "[1] alpha beta gamma delta [2] alpha beta gamma delta Q: what does it cost"
    assert call.params.temperature == 1.0 and call.params.max_tokens == 10  # given wins; the rest from the template


async def test_passages_that_do_not_fit_the_context_are_dropped_and_the_first_is_cut() -> None:
    long = " ".join(f"word{i}" for i in range(200))
    # Room: 100 - 10 (max_tokens) = 90; the chat without passages takes 4 + 2 + 6 + 2 = 14 tokens.
    service, _ = answers([Hit("a", 0.9), Hit("b", 0.8, text=long)])
    call = await service.prepare("assistant", QUESTION, SamplingParams())
    assert [c.chunk_id for c in call.citations] == ["a"] and len(call.prompt_ids) <= 90
    service, _ = answers([Hit("long", 0.9, text=long)])
    call = await service.prepare("assistant", QUESTION, SamplingParams())
    assert [c.chunk_id for c in call.citations] == ["long"] and len(call.prompt_ids) <= 90
    assert call.messages[-1]["content"].startswith("[1] w0 w1") and " ... Q:" in call.messages[-1]["content"]
    service, _ = answers([Hit("a", 0.9)], context=20)  # not even the conversation fits next to 10 answer tokens
    with pytest.raises(InvalidArgument, match="room for"):
        await service.prepare("assistant", QUESTION, SamplingParams())


async def test_what_cannot_answer_says_why() -> None:
    service, _ = answers([Hit("a", 0.9)])
    with pytest.raises(InvalidArgument, match="last message must be the user's"):
        await service.prepare("assistant", [{"role": "assistant", "content": "hi"}], SamplingParams())
    with pytest.raises(NotFound):
        await service.prepare("other", QUESTION, SamplingParams())
    service.catalog.app = parse_application("assistant", {**SPEC, "model": "gone"})  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="its model 'gone' is not served"):
        await service.prepare("assistant", QUESTION, SamplingParams())


# -- the generation log ----------------------------------------------------------------------------------------


class Publisher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: Any) -> None:
        self.events.append(event)


async def test_the_generation_log_event_carries_the_call() -> None:
    service, _ = answers([Hit("a", 0.5, title="Fees"), Hit("c", 0.4, title="Fees")])
    call = await service.prepare("assistant", QUESTION, SamplingParams(), given={"temperature"})
    publisher = Publisher()
    genlog = GenerationLog(publisher, service.llm, prices={"tiny": Price(1.0, 3.0)})  # type: ignore[arg-type]
    record = GenerationRecord(request_id="r1", door="openai", served=call.served, params=call.params,
                              messages=QUESTION, prompt_ids=call.prompt_ids, call=call, user="u")
    genlog.log(record, completion="It costs 3%.", finish_reason="stop", prompt_tokens=30, completion_tokens=5,
               time_to_first_token_s=0.012)
    (event,) = publisher.events
    payload: predictions_pb2.PredictionLogged = event.payload
    assert event.key == "r1" and (payload.model.name, payload.model.version) == ("tiny", 3)
    x = payload.llm
    assert (x.application, x.prompt_template.name, x.prompt_template.version) == ("assistant", "support", 2)
    assert list(x.context_chunk_ids) == ["a", "c"] and list(x.context_chunk_scores) == [0.5, 0.4]
    assert list(x.cited_titles) == ["Fees"] and x.tenant == "acme" and x.cache == "miss"
    assert x.cost == pytest.approx((30 * 1.0 + 5 * 3.0) / 1000) and x.time_to_first_token_ms == pytest.approx(12)
    assert x.prompt.startswith("w0 w1") and x.completion == "It costs 3%."
    assert payload.parameters["grounding"] == "supported" and payload.parameters["user"] == "u"
    assert GenerationLog(publisher, None).cost(call.served, 1000, 1000) == 0.0  # the default price


async def test_the_cache_key_holds_what_the_answer_was_built_from() -> None:
    """An application's cache key changes with its prompt version, its retrieval settings and the guard policy
    version that released the answer; the same call keys the same."""
    from flywheel.common.clients.ports import GuardPolicy

    service, _ = answers([Hit("a", 0.5)])
    call = await service.resolve("assistant", QUESTION, SamplingParams(temperature=0.0), given={"temperature"})
    policy = GuardPolicy("assistant", 1, fail_closed=True, stream_window_chars=160,
                         blocked_input_response="error", check_timeout_ms=500)
    key = call.cache_request(QUESTION, policy).exact_key()
    assert key == call.cache_request(QUESTION, policy).exact_key()
    assert key != call.cache_request(QUESTION).exact_key()  # unguarded
    assert key != call.cache_request(QUESTION, replace(policy, version=2)).exact_key()
    other_prompt = replace(call, prompt=replace(call.prompt, version=3))
    assert key != other_prompt.cache_request(QUESTION, policy).exact_key()
    other_k = replace(call, app=replace(call.app, retrieval=replace(call.app.retrieval, k=5)))
    assert key != other_k.cache_request(QUESTION, policy).exact_key()
