"""The fingerprint of an LLM request: everything that changes its answer, hashed into the keys of the
response caches.

- `CacheRequest` is the input: the served model version (and an adapter's base), the tenant, the
  conversation as the caller sent it, tools, sampling parameters, and, for applications, the application,
  its prompt template version and what retrieval depends on (the applications fill those fields).
- `exact_key`: sha256 of all of it, the last user turn included (the exact cache's key).
- `context_key`: sha256 of all of it except the text of the last user turn (the semantic cache's scope: a
  near-duplicate last turn may only match inside one context key, so a question asked under another system
  prompt, tenant, model or prompt version can never be answered from this one's entry).
- `cacheable`: sampled requests without a seed answer differently each time, so they bypass both caches.

Greedy requests (temperature 0) ignore top_p and seed (the engine's `TokenSampler` takes the argmax), so
the key drops them there: a greedy request with top_p 0.9 is the same request as one with top_p 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.inference.llm.sampling import SamplingParams

# Bumped whenever what goes into a key changes, so entries written under the old scheme stop matching.
SCHEME = 1


def cacheable(params: SamplingParams) -> bool:
    """Whether the same request always gets the same answer: greedy, or sampled with a seed."""
    return params.temperature == 0.0 or params.seed is not None


@dataclass(frozen=True)
class CacheRequest:
    """Everything that changes an answer. `messages` is the conversation as the caller sent it (for an
    application: before retrieval and templating; what the template and retrieval add is then named by
    `prompt_name`/`prompt_version` and `retrieval`). `prompt` instead of messages: a raw prompt (gRPC
    Generate): exact cache only."""

    model: str  # the name asked for (a base LLM or an adapter)
    model_version: int
    params: SamplingParams
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)
    prompt: str | None = None
    tenant: str = ""
    base_model: str = ""  # an adapter's base, and its version
    base_version: int = 0
    tools: Any = None  # JSON-able tool definitions, when tools are served
    application: str | None = None
    prompt_name: str | None = None  # the application's prompt template (registry model of kind prompt)
    prompt_version: int | None = None
    retrieval: Mapping[str, Any] | None = None  # JSON-able: collection, its index version, k, filters, ...
    # Other versioned things the answer depends on ({registry name: version}); a promotion of one of them
    # evicts the entries made with another version (see `dependencies`).
    depends_on: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, served: Any, params: SamplingParams, *, messages: Sequence[Mapping[str, str]] | None = None,
           prompt: str | None = None, tenant: str = "", **fields: Any) -> CacheRequest:
        """From a `ServedModel` (llm.service) and the request as parsed by a door."""
        adapter = served.kind == "adapter"
        return cls(model=served.name, model_version=served.version, params=params,
                   messages=tuple((m["role"], m["content"]) for m in messages or ()), prompt=prompt, tenant=tenant,
                   base_model=served.base_name if adapter else "", base_version=served.base_version if adapter else 0,
                   **fields)

    # -- what the keys are made of -----------------------------------------------------------------------

    def sampling(self) -> dict[str, Any]:
        p = self.params
        greedy = p.temperature == 0.0
        return {"temperature": float(p.temperature), "top_p": None if greedy else float(p.top_p),
                "seed": None if greedy else p.seed, "max_tokens": p.max_tokens, "stop": list(p.stop)}

    def _context(self) -> dict[str, Any]:
        return {"scheme": SCHEME, "tenant": self.tenant, "model": self.model, "model_version": self.model_version,
                "base_model": self.base_model, "base_version": self.base_version, "tools": self.tools,
                "application": self.application, "prompt_name": self.prompt_name,
                "prompt_version": self.prompt_version, "retrieval": self.retrieval,
                "depends_on": dict(sorted(self.depends_on.items())), "sampling": self.sampling()}

    def last_user_turn(self) -> str | None:
        """The text the semantic cache compares: the last message when it is a user turn (None for a raw
        prompt, or a conversation that ends with another role)."""
        if self.prompt is not None or not self.messages or self.messages[-1][0] != "user":
            return None
        return self.messages[-1][1]

    def exact_key(self) -> str:
        return _digest({**self._context(), "key": "exact", "prompt": self.prompt,
                        "messages": [list(m) for m in self.messages]})

    def context_key(self) -> str | None:
        """The semantic scope: everything but the last user turn's text (None when there is no such turn)."""
        if self.last_user_turn() is None:
            return None
        return _digest({**self._context(), "key": "context", "messages": [list(m) for m in self.messages[:-1]],
                        "last_role": "user"})

    def dependencies(self) -> dict[str, int]:
        """{registry name: version} of the versioned things the answer comes from: a promotion of one of these
        names to another version evicts the entry."""
        deps = dict(self.depends_on)
        deps[self.model] = self.model_version
        if self.prompt_name and self.prompt_version is not None:
            deps[self.prompt_name] = self.prompt_version
        return deps


def _digest(value: Mapping[str, Any]) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able: put JSON values in a cache fingerprint")
