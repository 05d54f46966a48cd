"""`tracking=mlflow`: one MLflow run per command, read back through MLflow's Python API."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from conftest import SMALL, read_json, twotower

from twotower_cli.artifacts.tracking import flatten, metric_key, numeric_items


def _runs(out_dir: Path) -> tuple[mlflow.MlflowClient, list]:
    client = mlflow.MlflowClient(f"sqlite:///{(out_dir / 'mlruns' / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("twotower")
    return client, client.search_runs([exp.experiment_id])


@pytest.fixture(autouse=True)
def _no_team_server(monkeypatch):
    """A CI machine's own MLFLOW_TRACKING_URI must not receive these runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_flatten_and_metric_names():
    assert flatten({"train": {"lr": 0.003, "ks": [10, 20]}, "seed": 0}) == {
        "train.lr": "0.003", "train.ks": "[10, 20]", "seed": "0"
    }  # fmt: skip
    assert metric_key("recall@20") == "recall_at_20"
    # strings and booleans are not metrics; nested keys join with /
    assert numeric_items({"a": {"b@5": 1}, "c": "x", "d": True, "e": 2.5}, "p") == {
        "p/a/b_at_5": 1.0, "p/e": 2.5
    }  # fmt: skip


def test_run_with_mlflow_logs_params_epochs_and_test_metrics(out_dir: Path, capsys):
    assert twotower("run", *SMALL, f"paths.out={out_dir}", "threads=1", "tracking=mlflow") == 0
    err = capsys.readouterr().err
    client, runs = _runs(out_dir)
    assert len(runs) == 1  # one MLflow run for the six stages
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "synthetic/inbatch/dssm"
    config = read_json(out_dir / "synthetic" / "preprocess" / "manifest.json")["config"]
    assert run.data.params["model.embed_dim"] == str(config["model"]["embed_dim"])
    assert run.data.params["train.epochs"] == "3"
    root = out_dir / "synthetic" / "sample" / "inbatch" / "dssm"
    assert run.data.params["dataset.load.n_users"] == "300"
    history = read_json(root / "train" / "history.json")
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert [m.value for m in losses] == [h["loss"] for h in history]
    valid = client.get_metric_history(run.info.run_id, "train/valid_recall_at_20")
    assert [m.value for m in valid] == [h["valid_recall@20"] for h in history]
    metrics = read_json(root / "evaluate" / "metrics.json")
    m = run.data.metrics
    assert m["test/model/recall_at_20"] == metrics["model"]["recall@20"]
    assert m["test/popularity/ndcg_at_50"] == metrics["popularity"]["ndcg@50"]
    assert "evaluate/model/recall_at_20" not in m  # not logged twice
    dirs = {"preprocess": out_dir / "synthetic" / "preprocess", "sample": root.parent,
            **{s: root / s for s in ("train", "embed", "index", "evaluate")}}  # fmt: skip
    for stage, stage_dir in dirs.items():
        assert m[f"seconds/{stage}"] == read_json(stage_dir / "manifest.json")["seconds"]
        assert run.data.tags[f"{stage}.dir"] == str(stage_dir.resolve())
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "evaluate")]
    assert "evaluate/metrics.json" in artifacts
    # a rerun skips the six current stages and still records them, read back from their dirs
    assert twotower("run", *SMALL, f"paths.out={out_dir}", "threads=1", "tracking=mlflow") == 0
    _, again = _runs(out_dir)
    again = next(r for r in again if r.info.run_id != run.info.run_id)
    assert again.data.metrics["test/model/recall_at_20"] == m["test/model/recall_at_20"]
    assert len(client.get_metric_history(again.info.run_id, "train/loss")) == 3
    # stderr is no terminal here: one progress line per epoch, no carriage-return redraws
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train:")]
    assert [line.split("|")[-1].split("[")[0].strip() for line in lines] == ["1/3", "2/3", "3/3"]
    # then the refit on train + valid for the best epoch count (train.refit), its own bar
    refit = [line for line in err.splitlines() if line.startswith("refit:")]
    assert len(refit) == read_json(root / "train" / "manifest.json")["figures"]["refit_epochs"]
    assert all("loss=" in line and "val_r@20=" in line for line in lines)


def test_failed_stage_is_a_failed_run_and_none_logs_nothing(out_dir: Path):
    assert twotower("train", *SMALL, f"paths.out={out_dir}", "tracking=mlflow") == 2
    _, runs = _runs(out_dir)
    assert [r.info.status for r in runs] == ["FAILED"]
    other = out_dir.parent / "other"
    assert twotower("preprocess", *SMALL, f"paths.out={other}") == 0
    assert not (other / "mlruns").exists()


def _stages_at(uri: str) -> list[str]:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("twotower").experiment_id])
    return [r.data.tags["stage"] for r in runs]


def test_tracking_uri_defaults_to_the_environment_then_the_key(out_dir: Path, monkeypatch):
    team = f"sqlite:///{out_dir.parent / 'team.db'}"  # an SQLite URI stands in for a server
    monkeypatch.chdir(out_dir.parent)  # where MLflow puts a bare SQLite store's artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team)
    assert twotower("preprocess", *SMALL, f"paths.out={out_dir}", "tracking=mlflow") == 0
    assert not (out_dir / "mlruns").exists()  # nothing in the local store
    assert _stages_at(team) == ["preprocess"]
    key = f"sqlite:///{out_dir.parent / 'key.db'}"
    assert twotower("preprocess", *SMALL, f"paths.out={out_dir}", "tracking=mlflow",
                    f"tracking.uri={key}") == 0  # fmt: skip
    assert _stages_at(key) == ["preprocess"] and _stages_at(team) == ["preprocess"]
