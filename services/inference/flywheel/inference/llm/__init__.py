"""Generative serving in inference: causal LMs and their LoRA adapters from the registry, a continuous
batching engine on CPU, sampling, int8 dynamic quantization and perplexity.

Importing this package is cheap: torch/transformers/peft are imported by the modules that need them
(`engine`, `loading`, ...), which the repository only imports once a model of kind LLM is promoted.
The doors build on `flywheel.inference.llm.service.LLMService` (see its docstring).
"""
