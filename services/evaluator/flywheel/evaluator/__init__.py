"""Flywheel evaluator: gates new predictive model versions against the serving champion."""
