"""Tower variants: every conf/model/*.yaml composes, instantiates, runs forward and backward;
the shared blocks on hand-worked numbers; the serving vectors reproduce the training scores;
task rows and user histories built by preprocess/train; the variants through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SMALL, read_json, twotower

# -- through the CLI ----------------------------------------------------------------------


def test_senet_with_history_runs_end_to_end_and_saves_field_weights(out_dir: Path):
    args = [*SMALL, f"paths.out={out_dir}", "model=senet", "model.history=true",
            "model.history_len=10", "train.epochs=6"]  # fmt: skip
    assert twotower("run", *args) == 0
    root = out_dir / "synthetic" / "sample" / "inbatch" / "senet"
    weights = read_json(root / "train" / "field_weights.json")
    assert list(weights["user"]) == ["user", "region", "age", "history"]
    assert list(weights["item"]) == ["item", "category", "tags"]
    assert all(0.0 < w < 1.0 for side in weights.values() for w in side.values())
    metrics = read_json(root / "evaluate" / "metrics.json")
    assert metrics["model"]["recall@20"] > metrics["popularity"]["recall@20"]


def test_multitask_reports_metrics_per_task(out_dir: Path):
    args = [*SMALL, f"paths.out={out_dir}", "model=multitask", "+dataset.tasks=[click]"]
    assert twotower("run", *args) == 0
    root = out_dir / "synthetic" / "sample" / "inbatch" / "multitask"
    metrics = read_json(root / "evaluate" / "metrics.json")
    assert set(metrics) == {"model", "popularity", "ease", "itemknn", "task/click"}
    # one task whose positives are the label's: its own retrieval is the fused one
    assert metrics["task/click"]["recall@20"] == pytest.approx(metrics["model"]["recall@20"])
    assert read_json(root / "train" / "tasks.json")["tasks"] == ["click"]


def test_multitask_without_data_set_tasks_is_a_one_line_error(out_dir: Path, capsys):
    # the synthetic data set declares tasks; without them multitask has nothing to train
    args = [*SMALL, f"paths.out={out_dir}", "model=multitask", "dataset.tasks=null"]
    assert twotower("preprocess", *args) == 0 and twotower("sample", *args) == 0
    capsys.readouterr()
    assert twotower("train", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.tasks is empty" in err[0]
    assert not (out_dir / "synthetic" / "sample" / "inbatch" / "multitask" / "train").exists()
