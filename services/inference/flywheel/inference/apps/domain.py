"""An application, as an operator defines it (`PUT /v1/applications/{name}`) and as it is stored (JSON).

    {"description": "Northwind Assist",
     "prompt": {"name": "support-assistant", "alias": "champion"},      or "support-assistant@champion"
     "model": "smollm2-135m-instruct",                                  served LLM or adapter name (its champion)
     "retrieval": {"collection": "bank-policies", "tenant": "northwind", "k": 4,
                   "weights": {"vector": 1.0, "text": 1.0}, "rrf_k": 60,
                   "filter": {"doc_types": [], "tags_any": [], "tags_all": [], "document_ids": []},
                   "min_similarity": 0.25},
     "guard_policy": "northwind-support"}                               stored; used once the guard exists

`min_similarity` is the grounding rule: an answer is generated only when at least one retrieved passage has a
cosine similarity to the question of at least this much; the others are not put into the prompt. When none
has, the application answers with the template's refusal and cites nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from flywheel.common.errors import InvalidArgument

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_K = 50
DEFAULT_K = 4
DEFAULT_MIN_SIMILARITY = 0.25
FILTER_KEYS = ("doc_types", "tags_any", "tags_all", "document_ids")


@dataclass(frozen=True)
class PromptRef:
    name: str
    alias: str = "champion"

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}"


@dataclass(frozen=True)
class Retrieval:
    collection: str
    tenant: str = ""
    k: int = DEFAULT_K
    # (vector, text) weights of the reciprocal rank fusion; None = the retriever's default.
    weights: tuple[float, float] | None = None
    rrf_k: int = 0
    filter: dict[str, list[str]] = field(default_factory=dict)
    min_similarity: float = DEFAULT_MIN_SIMILARITY


@dataclass(frozen=True)
class Application:
    name: str
    prompt: PromptRef
    model: str
    retrieval: Retrieval
    guard_policy: str = ""
    description: str = ""
    # Set by the store.
    revision: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str = ""
    updated_by: str = ""

    def spec(self) -> dict[str, Any]:
        """What an operator sends and the store keeps (no bookkeeping)."""
        r = self.retrieval
        retrieval: dict[str, Any] = {"collection": r.collection, "tenant": r.tenant, "k": r.k,
                                     "min_similarity": r.min_similarity}
        if r.weights is not None:
            retrieval["weights"] = {"vector": r.weights[0], "text": r.weights[1]}
        if r.rrf_k:
            retrieval["rrf_k"] = r.rrf_k
        if r.filter:
            retrieval["filter"] = {k: list(v) for k, v in r.filter.items()}
        return {"description": self.description, "prompt": {"name": self.prompt.name, "alias": self.prompt.alias},
                "model": self.model, "retrieval": retrieval, "guard_policy": self.guard_policy}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.name, "object": "application", **self.spec(), "revision": self.revision,
                "created_at": int(self.created_at.timestamp()) if self.created_at else None,
                "updated_at": int(self.updated_at.timestamp()) if self.updated_at else None,
                "created_by": self.created_by, "updated_by": self.updated_by}

    def stored(self, **bookkeeping: Any) -> Application:
        return replace(self, **bookkeeping)


def check_name(name: str, what: str = "application name") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidArgument(f"{what} {name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                              "letter or digit")
    return name


def _str(body: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}{key} must be a string, got {value!r}")
    return value


def _number(body: dict[str, Any], key: str, where: str, default: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{where}{key} must be a number, got {value!r}")
    return float(value)


def _int(body: dict[str, Any], key: str, where: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}{key} must be an integer, got {value!r}")
    return value


def _prompt(value: Any) -> PromptRef:
    if isinstance(value, str):
        name, _, alias = value.partition("@")
        value = {"name": name, "alias": alias or "champion"}
    if not isinstance(value, dict):
        raise InvalidArgument("prompt must be {\"name\": ..., \"alias\": ...} or \"name@alias\"")
    unknown = set(value) - {"name", "alias"}
    if unknown:
        raise InvalidArgument(f"prompt: unknown key(s) {', '.join(sorted(unknown))}; known: name, alias")
    name = check_name(_str(value, "name", "prompt."), "prompt.name")
    alias = _str(value, "alias", "prompt.", "champion") or "champion"
    if not ALIAS.match(alias):
        raise InvalidArgument(f"prompt.alias {alias!r} must be lower-case letters, digits, '_' or '-'")
    return PromptRef(name, alias)


def _retrieval(value: Any) -> Retrieval:
    if not isinstance(value, dict):
        raise InvalidArgument("retrieval must be an object with at least collection")
    known = {"collection", "tenant", "k", "weights", "rrf_k", "filter", "min_similarity"}
    unknown = set(value) - known
    if unknown:
        raise InvalidArgument(f"retrieval: unknown key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(sorted(known))}")
    where = "retrieval."
    collection = _str(value, "collection", where)
    if not collection:
        raise InvalidArgument("retrieval.collection is required")
    k = _int(value, "k", where, DEFAULT_K)
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"retrieval.k must be between 1 and {MAX_K}, got {k}")
    rrf_k = _int(value, "rrf_k", where, 0)
    if rrf_k < 0:
        raise InvalidArgument(f"retrieval.rrf_k must be >= 0, got {rrf_k}")
    weights = None
    if value.get("weights") is not None:
        w = value["weights"]
        if not isinstance(w, dict) or set(w) - {"vector", "text"}:
            raise InvalidArgument("retrieval.weights must be {\"vector\": number, \"text\": number}")
        weights = (_number(w, "vector", "retrieval.weights.", 1.0), _number(w, "text", "retrieval.weights.", 1.0))
        if min(weights) < 0 or max(weights) <= 0:
            raise InvalidArgument(f"retrieval.weights must be >= 0 and not both 0, got {weights}")
    flt: dict[str, list[str]] = {}
    raw_filter = value.get("filter") or {}
    if not isinstance(raw_filter, dict):
        raise InvalidArgument("retrieval.filter must be an object")
    for key, items in raw_filter.items():
        if key not in FILTER_KEYS:
            raise InvalidArgument(f"retrieval.filter.{key} is not a filter; known: {', '.join(FILTER_KEYS)}")
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise InvalidArgument(f"retrieval.filter.{key} must be a list of non-empty strings")
        if items:
            flt[key] = list(items)
    min_similarity = _number(value, "min_similarity", where, DEFAULT_MIN_SIMILARITY)
    if not -1.0 <= min_similarity <= 1.0:
        raise InvalidArgument(f"retrieval.min_similarity is a cosine similarity in [-1, 1], got {min_similarity}")
    return Retrieval(collection=collection, tenant=_str(value, "tenant", where), k=k, weights=weights, rrf_k=rrf_k,
                     filter=flt, min_similarity=min_similarity)


def parse_application(name: str, body: Any) -> Application:
    """An application from an operator's JSON; InvalidArgument naming the field at fault."""
    check_name(name)
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object with prompt, model and retrieval")
    known = {"description", "prompt", "model", "retrieval", "guard_policy", "id", "object"}
    unknown = set(body) - known - {"revision", "created_at", "updated_at", "created_by", "updated_by"}
    if unknown:
        raise InvalidArgument(f"unknown key(s) {', '.join(sorted(unknown))}; known: "
                              "description, prompt, model, retrieval, guard_policy")
    if body.get("id") not in (None, name):
        raise InvalidArgument(f"id {body.get('id')!r} differs from the name in the path {name!r}")
    if "prompt" not in body:
        raise InvalidArgument("prompt is required: the prompt template's registry name (and alias)")
    model = _str(body, "model", "")
    if not model:
        raise InvalidArgument("model is required: the served LLM or adapter name")
    check_name(model, "model")
    guard = _str(body, "guard_policy", "")
    if guard:
        check_name(guard, "guard_policy")
    return Application(name=name, prompt=_prompt(body["prompt"]), model=model,
                       retrieval=_retrieval(body.get("retrieval")), guard_policy=guard,
                       description=_str(body, "description", "").strip())
