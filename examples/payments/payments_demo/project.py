"""What the payments project tells the platform: the settings its services need, by environment variable.

`make run` (flywheel.common.launcher) finds this function through the `flywheel.projects` entry point
and sets each variable for the services it starts, unless the environment already sets it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent


def settings() -> dict[str, str]:
    """The trainer and the evaluator read this project's model specs (`models/`), the feature store
    applies its Feast repo (`feature_repo/`)."""
    models = str(PACKAGE_DIR / "models")
    return {
        "FLYWHEEL_TRAINER_SPECS_DIR": models,
        "FLYWHEEL_EVALUATOR_SPECS_DIR": models,
        "FLYWHEEL_FEATURESTORE_REPO": str(PACKAGE_DIR / "feature_repo"),
    }
