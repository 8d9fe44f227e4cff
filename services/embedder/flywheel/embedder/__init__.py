"""Flywheel embedder: sentence embedding models from the registry, batched across callers."""
