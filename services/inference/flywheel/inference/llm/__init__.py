"""Generative serving in inference: causal LMs and their LoRA adapters from the registry, a continuous
batching engine on CPU, sampling, int8 dynamic quantization and perplexity.

Importing this package is cheap: torch/transformers/peft are imported by the modules that need them
(`engine`, `loading`, ...), which the repository only imports once a model of kind LLM is promoted.
The doors build on `flywheel.inference.llm.service.LLMService` (see its docstring).
"""

import sys


def is_overloaded(exc: BaseException) -> bool:
    """Whether `exc` is the engine's Overloaded (queue full), without importing the engine (and transformers)
    when no engine ever ran: then it cannot be."""
    engine = sys.modules.get("flywheel.inference.llm.engine")
    overloaded = getattr(engine, "Overloaded", None)  # None too while the first engine's module is being imported
    return overloaded is not None and isinstance(exc, overloaded)
