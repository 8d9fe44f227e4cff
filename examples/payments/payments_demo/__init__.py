"""Flywheel's demo project: card payments at a bank, fraud labels that arrive late as chargebacks.

A user's project, not platform code: a data generator (`generator`), the bank's streaming
feature pipeline and event publishing (`pipeline`), a Feast repo (`feature_repo`), model
specs (`models/`), and the live driver that plays the bank around a running platform
(`python -m payments_demo.live`; its docstring maps the driver's modules) with its status page
(`status`). `python -m payments_demo --help` shows the command line.
"""

from pathlib import Path

from payments_demo.generator import (
    SCENARIOS,
    FeatureRow,
    Scenario,
    Transaction,
    all_events,
    feature_events,
    feature_rows,
    feedback_events,
    fraud_rate,
    generate,
    get_scenario,
    label_events,
    publish,
)

PACKAGE_DIR = Path(__file__).parent
# The Feast repo (definitions only; the platform sets the project and the stores).
FEATURE_REPO = PACKAGE_DIR / "feature_repo"
# Model specs the trainer reads, one YAML file per model.
MODEL_SPECS = PACKAGE_DIR / "models"
FRAUD_MODEL_SPEC = MODEL_SPECS / "fraud.yaml"

__all__ = [
    "FEATURE_REPO", "FRAUD_MODEL_SPEC", "MODEL_SPECS", "SCENARIOS", "FeatureRow", "Scenario", "Transaction",
    "all_events", "feature_events", "feature_rows", "feedback_events", "fraud_rate", "generate", "get_scenario",
    "label_events", "publish",
]
