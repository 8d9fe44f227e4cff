"""Flywheel trainer: point-in-time correct training runs that end as registered model versions."""
