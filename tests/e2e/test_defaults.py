"""Defaults that follow the log (issue 29): the batch and patience for a log's size, and the
popularity score `train` compares its validation recall with."""

from __future__ import annotations

import pytest
from conftest import SMALL, read_json, twotower


@pytest.mark.slow
def test_train_warns_when_validation_stays_below_popularity(tmp_path, capsys):
    # one epoch at a learning rate of 1e-6 leaves the towers near their random start
    out = tmp_path / "outputs"
    assert twotower("run", *SMALL, f"paths.out={out}", "train.epochs=1", "train.lr=1e-6") == 0
    figures = read_json(out / "synthetic" / "sample" / "inbatch" / "dssm" / "train" /
                        "manifest.json")["figures"]  # fmt: skip
    assert figures["best_valid"] < figures["popularity_valid"]
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [
        f"train: warning: validation recall@20 {figures['best_valid']:.4f} stayed below "
        f"popularity's {figures['popularity_valid']:.4f}; try twotower tune or docs/defaults.md"
    ]
