"""Prompt templates: the artifact of a registry version of kind MODEL_KIND_PROMPT, read by inference (which fills
them for an application's grounded answers) and by whatever evaluates or registers them (CLI, demo, evaluator).

The artifact is one small YAML (or JSON) document:

    format: flywheel.prompt/v1
    description: What this template is for.
    system: |                       the system turn (optional)
      You are Northwind Assist ...
    template: |                     the user turn sent to the model: must use {question}; {context} receives the
      Passages:                     retrieved passages (a template without {context} answers without retrieval)
      {context}
      Question: {question}
    context_item: "[{n}] {heading}\\n{text}"   how one retrieved passage is written (default shown)
    context_separator: "\\n\\n"      between passages
    parameters:                     defaults for what a request does not set
      temperature: 0.2
      top_p: 0.9
      max_tokens: 200
      stop: []
    refusal: I can't find that in the bank's documents.   answered, instead of generating, when no retrieved
                                                          passage supports an answer (required with {context})

Variables, written `{name}` (literal braces as `{{` and `}}`): in `system` and `template`: question (the last user
turn), context (the passages), application (the application's name); in `context_item`: n (1-based citation
number), title, section (its heading path), heading (the section, or the title when there is none), source,
document_id, text. Anything else is refused when the template is parsed, so a
typo never reaches a customer. Values are inserted as they are (a question holding braces is safe).

Registering: `register_prompt` stores the file's bytes as a version (framework `flywheel-prompt`, tags with the
variables and the file's sha256), and registering the same bytes again finds that version instead of adding one.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import InvalidArgument
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

PROMPT_FORMAT = "flywheel.prompt/v1"
FRAMEWORK = "flywheel-prompt"
ARTIFACT_SHA_TAG = "artifact_sha256"
# The application a version is a candidate for (prompt templates and the fine-tuner's adapters): the evaluator runs it
# on that application's golden set.
APPLICATION_TAG = "application"
MAX_BYTES = 256 * 1024

TURN_VARIABLES = ("question", "context", "application")
ITEM_VARIABLES = ("n", "title", "section", "heading", "source", "document_id", "text")
DEFAULT_CONTEXT_ITEM = "[{n}] {heading}\n{text}"
DEFAULT_SEPARATOR = "\n\n"
PARAMETERS = {"temperature": (int, float), "top_p": (int, float), "max_tokens": (int,), "stop": (list,),
              "seed": (int,)}
KEYS = {"format", "description", "system", "template", "context_item", "context_separator", "parameters",
        "refusal", "variables"}


@dataclass(frozen=True)
class ContextChunk:
    """One retrieved passage as a template sees it."""

    text: str
    title: str = ""
    section: str = ""
    source: str = ""
    document_id: str = ""


@dataclass(frozen=True)
class PromptTemplate:
    template: str
    system: str = ""
    context_item: str = DEFAULT_CONTEXT_ITEM
    context_separator: str = DEFAULT_SEPARATOR
    parameters: Mapping[str, Any] = field(default_factory=dict)
    refusal: str = ""
    description: str = ""

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables `system` and `template` use, in order of first use."""
        seen: list[str] = []
        for text in (self.system, self.template):
            for name in _fields(text):
                if name not in seen:
                    seen.append(name)
        return tuple(seen)

    @property
    def grounded(self) -> bool:
        """Whether answers are built from retrieved passages (the template uses {context})."""
        return "context" in self.variables

    def render_item(self, n: int, chunk: ContextChunk) -> str:
        return self.context_item.format(n=n, title=chunk.title, section=chunk.section,
                                        heading=chunk.section or chunk.title, source=chunk.source,
                                        document_id=chunk.document_id, text=chunk.text)

    def render_context(self, chunks: Sequence[ContextChunk]) -> str:
        return self.context_separator.join(self.render_item(i, c) for i, c in enumerate(chunks, start=1))

    def render(self, question: str, *, context: str = "", application: str = "") -> tuple[str, str]:
        """(system turn, user turn) with the variables filled."""
        values = {"question": question, "context": context, "application": application}
        return self.system.format(**values), self.template.format(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROMPT_FORMAT, "description": self.description, "system": self.system,
                "template": self.template, "context_item": self.context_item,
                "context_separator": self.context_separator, "parameters": dict(self.parameters),
                "refusal": self.refusal, "variables": list(self.variables)}


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _check_fields(text: str, allowed: Sequence[str], where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone { or }
        raise InvalidArgument(f"{where}: {exc} (write literal braces as {{{{ and }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "":
            raise InvalidArgument(f"{where}: empty placeholder {{}}; name the variable ({', '.join(allowed)})")
        if name not in allowed:
            raise InvalidArgument(f"{where}: unknown variable {{{name}}}; known: {', '.join(allowed)}")
        if spec or conversion:
            raise InvalidArgument(f"{where}: {{{name}}} takes no format spec or conversion")


def _text(data: Mapping[str, Any], key: str, *, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be text, got {type(value).__name__}")
    return value


def _parameters(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("parameters must be a mapping (temperature, top_p, max_tokens, stop, seed)")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in PARAMETERS:
            raise InvalidArgument(f"parameters.{key} is not a generation parameter; known: {', '.join(PARAMETERS)}")
        if isinstance(value, bool) or not isinstance(value, PARAMETERS[key]):
            raise InvalidArgument(f"parameters.{key} has the wrong type: {value!r}")
        out[key] = value
    if "temperature" in out and not 0.0 <= out["temperature"] <= 2.0:
        raise InvalidArgument(f"parameters.temperature must be between 0 and 2, got {out['temperature']}")
    if "top_p" in out and not 0.0 < out["top_p"] <= 1.0:
        raise InvalidArgument(f"parameters.top_p must be in (0, 1], got {out['top_p']}")
    if "max_tokens" in out and out["max_tokens"] < 1:
        raise InvalidArgument(f"parameters.max_tokens must be at least 1, got {out['max_tokens']}")
    if "stop" in out and (len(out["stop"]) > 4 or not all(isinstance(s, str) and s for s in out["stop"])):
        raise InvalidArgument("parameters.stop must be at most 4 non-empty strings")
    return out


def parse_prompt_template(data: bytes | str, *, source: str = "the prompt template") -> PromptTemplate:
    """Parse and validate an artifact (YAML or JSON). InvalidArgument naming the field at fault."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise InvalidArgument(f"{source} is {len(data)} bytes; a prompt template is at most {MAX_BYTES}")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{source} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source} is not valid YAML or JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{source} must be a mapping with at least `template`")
    try:
        return _from_mapping(raw)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{source}: {exc}") from None


def _from_mapping(raw: dict[str, Any]) -> PromptTemplate:
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise InvalidArgument(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
    fmt = raw.get("format", PROMPT_FORMAT)
    if fmt != PROMPT_FORMAT:
        raise InvalidArgument(f"format {fmt!r} is not supported (expected {PROMPT_FORMAT})")
    template = _text(raw, "template")
    if not template.strip():
        raise InvalidArgument("template is required: the user turn, with {question}")
    system = _text(raw, "system")
    _check_fields(system, TURN_VARIABLES, "system")
    _check_fields(template, TURN_VARIABLES, "template")
    if "question" not in _fields(template):
        raise InvalidArgument("template must use {question} (the user's last turn)")
    item = _text(raw, "context_item", default=DEFAULT_CONTEXT_ITEM)
    _check_fields(item, ITEM_VARIABLES, "context_item")
    if "text" not in _fields(item):
        raise InvalidArgument("context_item must use {text} (the passage)")
    prompt = PromptTemplate(template=template, system=system, context_item=item,
                            context_separator=_text(raw, "context_separator", default=DEFAULT_SEPARATOR),
                            parameters=_parameters(raw.get("parameters")), refusal=_text(raw, "refusal").strip(),
                            description=_text(raw, "description").strip())
    if prompt.grounded and not prompt.refusal:
        raise InvalidArgument("refusal is required when the template uses {context}: what the application answers "
                              "when no retrieved passage supports an answer")
    declared = raw.get("variables")
    if declared is not None and (not isinstance(declared, list) or sorted(map(str, declared)) !=
                                 sorted(prompt.variables)):
        raise InvalidArgument(f"variables {declared!r} do not match what system and template use: "
                              f"{list(prompt.variables)}")
    return prompt


def prompt_json(prompt: PromptTemplate) -> str:
    return json.dumps(prompt.to_dict(), indent=2)


async def register_prompt(registry: ModelRegistry, name: str, data: bytes, *, description: str = "",
                          filename: str = "", application: str = "") -> tuple[reg.ModelVersion, bool]:
    """Register a prompt template artifact (validated first) as a version of `name` (kind MODEL_KIND_PROMPT), unless
    a version with these exact bytes exists (and, when `application` is given, the same `application` tag: the
    evaluator maps a candidate version to its application's golden set by that tag). Returns (the version, whether
    new)."""
    prompt = parse_prompt_template(data, source=filename or name)
    sha256 = hashlib.sha256(data).hexdigest()
    found = await registry.find_by_tag(name, ARTIFACT_SHA_TAG, sha256)
    if found is not None and (not application or found.tags.get(APPLICATION_TAG) == application):
        if found.kind != common_pb2.MODEL_KIND_PROMPT:
            raise InvalidArgument(f"{name} v{found.version} is not a prompt template")
        return found, False
    tags = {ARTIFACT_SHA_TAG: sha256, "format": PROMPT_FORMAT, "variables": ",".join(prompt.variables),
            "grounded": str(prompt.grounded).lower()}
    if application:
        tags[APPLICATION_TAG] = application
    spec = reg.ModelVersionSpec(
        model_name=name, kind=common_pb2.MODEL_KIND_PROMPT, framework=FRAMEWORK,
        filename=filename or f"{name}.yaml", description=description or prompt.description, tags=tags,
        expected_sha256=sha256)
    return await registry.register(spec, data), True
