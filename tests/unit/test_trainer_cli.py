"""`flywheel train`: parsing the window and the run parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest

from flywheel.trainer.cli import parse_params, parse_window


def test_cli_window_and_params() -> None:
    assert parse_window("2026-01-01:2026-02-01") == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert parse_window("2026-01-01T06:00Z/2026-01-02T00:00+01:00") == (
        datetime(2026, 1, 1, 6, tzinfo=UTC), datetime(2026, 1, 1, 23, tzinfo=UTC))
    for bad in ("2026-02-01:2026-01-01", "january", "2026-01-01:2026-13-01"):
        with pytest.raises(click.BadParameter):
            parse_window(bad)
    assert parse_params(("epochs=5", "scenario = stable")) == {"epochs": "5", "scenario": "stable"}
    with pytest.raises(click.BadParameter):
        parse_params(("epochs",))

