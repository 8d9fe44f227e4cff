"""What the payments project tells the platform: the settings its services need, by environment variable.

`make run` (flywheel.common.launcher) finds this function through the `flywheel.projects` entry point
and sets each variable for the services it starts, unless the environment already sets it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent


# The monitor samples uncertain fraud scores for human review (|p - 0.5| <= band, a share `rate` of them, at
# most `max_per_window` per window of 500 payments, i.e. ~10 s of the live demo): a steady trickle a person
# can keep up with in the review app, where the labels are called what the bank calls them.
REVIEW_POLICY = '{"fraud": {"band": 0.3, "rate": 0.25, "max_per_window": 3}}'
REVIEW_LABELS = '{"fraud": ["legit", "fraud"]}'


def settings() -> dict[str, str]:
    """The trainer and the evaluator read this project's model specs (`models/`), the feature store
    applies its Feast repo (`feature_repo/`), the monitor sends uncertain fraud scores to review, and the
    review app names the fraud labels, the guard seeds the support assistant's policy, and the evaluator pushes
    the support assistant's golden set (`golden/`)."""
    models = str(PACKAGE_DIR / "models")
    return {
        "FLYWHEEL_TRAINER_SPECS_DIR": models,
        "FLYWHEEL_EVALUATOR_SPECS_DIR": models,
        "FLYWHEEL_FEATURESTORE_REPO": str(PACKAGE_DIR / "feature_repo"),
        "FLYWHEEL_MONITOR_REVIEW_POLICY": REVIEW_POLICY,
        "FLYWHEEL_REVIEW_LABEL_NAMES": REVIEW_LABELS,
        # The support assistant's guard policy, stored by the guard as version 1 on its first start.
        "FLYWHEEL_GUARD_POLICIES_DIR": str(PACKAGE_DIR / "guard_policies"),
        # The support assistant's golden set, pushed by the evaluator on start (a new version only when it changed).
        "FLYWHEEL_EVALUATOR_GOLDEN_DIR": str(PACKAGE_DIR / "golden"),
    }
