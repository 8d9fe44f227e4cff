"""Prompt templates (libs): the artifact format, its validation and rendering; the demo's shipped template."""

from __future__ import annotations

import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.common.prompt_templates import PROMPT_FORMAT, ContextChunk, parse_prompt_template

DEMO = "examples/payments/payments_demo/prompts/support-assistant.yaml"
MINIMAL = "template: 'Q: {question}'"
GROUNDED = """
system: You are {application}.
template: |
  {context}
  Q: {question}
refusal: Not in our documents.
parameters: {temperature: 0.2, max_tokens: 50, stop: ["###"]}
"""


def test_the_demo_template_is_valid_and_grounded() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    template = parse_prompt_template((root / DEMO).read_bytes())
    assert template.grounded and template.variables == ("context", "question")
    assert template.refusal.startswith("I can't find that in Northwind Bank's documents")
    assert dict(template.parameters) == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 120}


def test_rendering_fills_the_variables_and_numbers_the_passages() -> None:
    template = parse_prompt_template(GROUNDED)
    chunks = [ContextChunk("Fees are {low}.", title="Fees", section="Fees > Abroad"),
              ContextChunk("Cards.", title="Cards")]
    context = template.render_context(chunks)
    assert context == "[1] Fees > Abroad\nFees are {low}.\n\n[2] Cards\nCards."  # heading: the section, else title
    system, user = template.render("What is {x}?", context=context, application="assistant")
    assert system == "You are assistant." and user == f"{context}\nQ: What is {{x}}?\n"  # values are not re-parsed
    assert template.to_dict()["format"] == PROMPT_FORMAT and template.to_dict()["variables"] == ["application",
                                                                                                 "context",
                                                                                                 "question"]


def test_a_template_without_context_is_not_grounded() -> None:
    template = parse_prompt_template(MINIMAL)
    assert not template.grounded and template.refusal == "" and template.system == ""


@pytest.mark.parametrize("text, message", [
    ("template: hello", "must use {question}"),
    ("template: '{question} {answer}'", "unknown variable {answer}"),
    ("template: '{question} {context}'", "refusal is required"),
    ("template: '{question'", "literal braces"),
    ("template: '{question} {}'", "empty placeholder"),
    ("template: '{question!r}'", "no format spec"),
    ("template: '{question}'\nextra: 1", "unknown key(s) extra"),
    ("format: other/v9\ntemplate: '{question}'", "format 'other/v9'"),
    ("template: '{question}'\nparameters: {temperature: 3}", "temperature must be between 0 and 2"),
    ("template: '{question}'\nparameters: {top_k: 3}", "parameters.top_k is not a generation parameter"),
    ("template: '{question}'\nparameters: {max_tokens: 0}", "at least 1"),
    ("template: '{question}'\nparameters: {max_tokens: true}", "wrong type"),
    ("template: '{question}'\ncontext_item: '{title}'", "context_item must use {text}"),
    ("template: '{question}'\ncontext_item: '{text} {page}'", "unknown variable {page}"),
    ("template: '{question}'\nvariables: [question, context]", "do not match"),
    ("- a list", "must be a mapping"),
    (": : :", "not valid YAML"),
])
def test_bad_templates_are_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        parse_prompt_template(text)


def test_json_and_bytes_are_accepted_and_size_is_bounded() -> None:
    assert parse_prompt_template(b'{"template": "{question}"}').variables == ("question",)
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        parse_prompt_template(b"\xff\xfe")
    with pytest.raises(InvalidArgument, match="at most"):
        parse_prompt_template(b"template: '{question}'\n" + b"#" * 300_000)
