"""The Python API (twotower_cli.api): stages with overrides return their figures, a finished
run answers as `twotower serve` does, and errors raise instead of exiting."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SMALL

from twotower_cli import api
from twotower_cli.core.errors import ConfigError, TwoTowerError


def test_errors_raise_instead_of_exiting(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^train.lr must be > 0.0, got 0.0"):
        api.run("train", [*SMALL, "train.lr=0", f"paths.out={tmp_path}"])
    with pytest.raises(ConfigError, match="nosuchkey"):
        api.run("train", [*SMALL, "train.nosuchkey=1"])
    with pytest.raises(ConfigError, match="stage: 'fit'"):
        api.run("fit")
    # missing inputs: the one-line error the CLI prints, as an exception
    with pytest.raises(TwoTowerError, match="twotower preprocess"):
        api.run("train", [*SMALL, f"paths.out={tmp_path}"])
