"""End to end: all six stages on a small generated data set, and the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import SMALL, read_json, twotower


def test_stages_one_by_one_write_their_artifacts(out_dir: Path):
    paths = f"paths.out={out_dir}"
    for stage in ("preprocess", "sample", "train", "embed", "index", "evaluate"):
        assert twotower(stage, *SMALL, paths) == 0, stage
    run_root = out_dir / "synthetic" / "sample" / "inbatch" / "dssm"
    for stage in ("train", "embed", "index", "evaluate"):
        manifest = read_json(run_root / stage / "manifest.json")
        assert manifest["stage"] == stage
        assert manifest["config"]["paths"]["out"] == str(out_dir)
    metrics = read_json(run_root / "evaluate" / "metrics.json")
    assert set(metrics) == {"model", "popularity", "ease"}
    for run in metrics.values():
        assert {"recall@10", "precision@20", "ndcg@50", "hit_rate@20", "coverage@10"} <= set(run)
        assert all(0.0 <= v <= 1.0 for k, v in run.items() if "@" in k and "valid" not in k)
    # planted clusters: even three epochs beat popularity clearly
    assert metrics["model"]["recall@20"] > metrics["popularity"]["recall@20"] + 0.05


def test_stage_without_its_inputs_names_the_command_to_run_first(out_dir: Path, capsys):
    assert twotower("train", *SMALL, f"paths.out={out_dir}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "run `twotower preprocess` first" in err[0]
    assert not (out_dir / "synthetic" / "sample").exists()


def test_model_sweep_reuses_the_same_preprocess(out_dir: Path):
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths) == 0
    before = (out_dir / "synthetic" / "preprocess" / "manifest.json").stat().st_mtime_ns
    assert twotower("train", *SMALL, paths, "-m", "model.out_dim=16,32") == 0
    after = (out_dir / "synthetic" / "preprocess" / "manifest.json").stat().st_mtime_ns
    assert before == after
    assert (out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train" / "model.pt").exists()


def test_installed_script_runs_the_whole_pipeline(out_dir: Path):
    script = Path(sys.executable).with_name("twotower")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [str(script), "run", *SMALL, f"paths.out={out_dir}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| recall@20 |" in proc.stdout
    assert (
        out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "evaluate" / "metrics.json"
    ).exists()


def test_unknown_stage_word_exits_non_zero(capsys):
    assert twotower("fit") == 2
    assert "unknown stage 'fit'" in capsys.readouterr().err


def test_bad_index_factory_fails_before_training(out_dir: Path, capsys):
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths) == 0
    capsys.readouterr()
    # PQ7 cannot split the DSSM's 64-d vectors into 7 parts; the check names the key, one line
    assert twotower("train", *SMALL, paths, "index.factory=PQ7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.factory: 'PQ7'" in err[0] and "64-d" in err[0], err
    assert not (out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train").exists()


def test_a_sample_made_with_other_sampler_settings_is_not_reused(out_dir: Path, capsys):
    # sample_dir is keyed by the sampler's name: the second config would train on the first's
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths, "sampler=random", "sampler.n_neg=2") == 0
    capsys.readouterr()
    assert twotower("train", *SMALL, paths, "sampler=random", "sampler.n_neg=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.n_neg=2, not 3" in err[0] and "`twotower sample`" in err[0]
    # another seed reuses the sample (seeds are not compared); so does the same setting
    assert twotower("train", *SMALL, paths, "sampler=random", "sampler.n_neg=2", "seed=1") == 0
    # settings only training reads (mixed: n_uniform, alpha) reuse the sample, too
    assert twotower("sample", *SMALL, paths, "sampler=mixed") == 0
    assert twotower("train", *SMALL, paths, "sampler=mixed", "sampler.n_uniform=64") == 0


def test_embeddings_of_an_older_preprocess_are_not_scored_against_a_new_split(out_dir, capsys):
    paths = f"paths.out={out_dir}"
    for stage in ("preprocess", "sample", "train", "embed", "index"):
        assert twotower(stage, *SMALL, paths) == 0, stage
    split = "dataset.split.test_fraction=0.3"
    assert twotower("preprocess", *SMALL, paths, split) == 0
    capsys.readouterr()
    assert twotower("evaluate", *SMALL, paths, split) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embed was made with dataset.split.test_fraction=0.2" in err[0]
