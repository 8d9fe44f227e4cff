"""Flywheel guard: input and output rails for LLM applications, versioned policies, audit trail."""
