"""Flywheel fine-tuner: LoRA adapters of an LLM application's base model, learned from reviewers' corrections."""
