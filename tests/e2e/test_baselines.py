"""EASE's closed form worked by hand, its lambda choice, and its place in `twotower evaluate`."""

from __future__ import annotations

from pathlib import Path

from conftest import SMALL, read_json, twotower


def test_evaluate_scores_ease_beside_the_model(out_dir: Path, capsys):
    assert twotower("run", *SMALL, f"paths.out={out_dir}", "eval.ease_lambdas=[1,100]") == 0
    table = capsys.readouterr().out
    assert "| metric | model | popularity | ease | itemknn |" in table
    run_root = out_dir / "synthetic" / "sample" / "inbatch" / "dssm"
    metrics = read_json(run_root / "evaluate" / "metrics.json")
    assert metrics["ease"]["lambda"] in (1.0, 100.0)
    assert set(metrics["ease"]["valid_recall@20"]) == {"1.0", "100.0"}
    # planted clusters: the item-item models beat the most-popular list
    assert metrics["ease"]["recall@20"] > metrics["popularity"]["recall@20"] + 0.05
    assert metrics["itemknn"]["recall@20"] > metrics["popularity"]["recall@20"] + 0.05
    assert metrics["itemknn"]["neighbours"] in (10, 20, 50, 100, 200, 500, 1000)
    # above eval.ease_max_items EASE is fitted on the most popular items, and the table says so
    assert twotower("evaluate", *SMALL, f"paths.out={out_dir}", "eval.ease_max_items=10") == 0
    out = capsys.readouterr().out
    assert "| ease (top 10 of " in out and "evaluate: EASE on the 10 most popular of" in out
    metrics = read_json(run_root / "evaluate" / "metrics.json")
    assert metrics["ease"]["items"] == 10 and "baselines_skipped" not in metrics


def test_unknown_baseline_is_a_one_line_error(small_run: Path, tmp_path: Path, capsys):
    import shutil

    out = tmp_path / "outputs"
    shutil.copytree(small_run, out)
    assert twotower("evaluate", *SMALL, f"paths.out={out}", "eval.baselines=[knn]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("twotower evaluate: error: eval.baselines: unknown ['knn'];"
                       " choose from popularity, ease, itemknn")  # fmt: skip
