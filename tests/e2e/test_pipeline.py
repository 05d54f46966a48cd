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
    assert set(metrics) == {"model", "popularity", "ease", "itemknn"}
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
    sample = out_dir / "synthetic" / "sample" / "inbatch"
    for dim in (16, 32):  # each job of the sweep trains into its own run dir
        assert (sample / f"dssm-model.out_dim={dim}" / "train" / "model.pt").exists()


def test_readme_sweep_keeps_every_jobs_metrics(out_dir: Path):
    paths = f"paths.out={out_dir}"
    sweep = ("-m", "model.temperature=0.05,0.1", "seed=0,1")
    assert twotower("run", *SMALL, "train.epochs=1", "threads=1", paths, *sweep) == 0
    sample = out_dir / "synthetic" / "sample" / "inbatch"
    runs = sorted(p.parent.parent.name for p in sample.glob("*/evaluate/metrics.json"))
    assert runs == [f"dssm-model.temperature={t},seed={s}" for t in ("0.05", "0.1")
                    for s in (0, 1)]  # fmt: skip
    recalls = {r: read_json(sample / r / "evaluate" / "metrics.json")["model"]["recall@20"]
               for r in runs}  # fmt: skip
    assert len(set(recalls.values())) == 4  # four different models, none overwritten


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
    assert len(err) == 1 and "was made with dataset.split.test_fraction=0.2" in err[0]


def test_max_steps_caps_training_and_validates_the_last_epoch(out_dir: Path):
    paths = f"paths.out={out_dir}"
    for stage in ("preprocess", "sample"):
        assert twotower(stage, *SMALL, paths) == 0
    examples = read_json(out_dir / "synthetic" / "sample" / "inbatch" / "manifest.json")
    n = examples["figures"]["examples"]
    per_epoch = -(-n // 256)  # SMALL's batch 256, last batch partial
    # 1.5 epochs' worth of steps: epoch 1 whole, epoch 2 stops after half, then training ends
    cap = per_epoch + per_epoch // 2
    assert twotower("train", *SMALL, paths, "train.epochs=5", f"train.max_steps={cap}") == 0
    history = read_json(out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train"
                        / "history.json")  # fmt: skip
    assert [(h["epoch"], h["steps"]) for h in history] == [(1, per_epoch), (2, per_epoch // 2)]
    assert all(0.0 <= h["valid_recall@20"] <= 1.0 for h in history)


def test_user_samples_bound_validation_and_evaluation(out_dir: Path):
    paths = f"paths.out={out_dir}"
    run_root = out_dir / "synthetic" / "sample" / "inbatch" / "dssm"
    assert twotower("run", *SMALL, paths) == 0
    full = read_json(run_root / "evaluate" / "metrics.json")
    full_valid = read_json(run_root / "train" / "history.json")[0]["valid_recall@20"]
    n_test = read_json(run_root / "embed" / "manifest.json")["figures"]["users"]
    assert "users_sampled" not in full
    # a sample of 10 test users: every ranking scored over the same 10, and said so
    assert twotower("evaluate", *SMALL, paths, "eval.max_users=10") == 0
    sampled = read_json(run_root / "evaluate" / "metrics.json")
    assert sampled["users_sampled"] == {"evaluated": 10, "of": n_test, "seed": 0}
    assert read_json(run_root / "evaluate" / "manifest.json")["figures"]["users"] == 10
    assert sampled["model"]["recall@20"] != full["model"]["recall@20"]
    assert sampled["popularity"]["recall@20"] != full["popularity"]["recall@20"]
    # a sample as large as the test users is every user: the same numbers as no sample
    assert twotower("evaluate", *SMALL, paths, f"eval.max_users={n_test}") == 0
    assert read_json(run_root / "evaluate" / "metrics.json") == full
    # early stopping on 3 validation users: another score than on all of them
    assert twotower("train", *SMALL, paths, "train.valid_max_users=3") == 0
    three = read_json(run_root / "train" / "history.json")[0]["valid_recall@20"]
    assert three != full_valid and 0.0 <= three <= 1.0


def test_steps_allowed_counts_the_cap_from_the_history():
    from twotower_cli.training.trainer import steps_allowed

    # 10 batches an epoch, cap 25: 10, 10, then 25 - 20 = 5, then none; cap 0 = no cap
    history = []
    allowed = []
    for _ in range(4):
        allowed.append(steps_allowed(10, 25, history))
        history.append({"steps": allowed[-1]})
    assert allowed == [10, 10, 5, 0]
    assert steps_allowed(10, 0, history) == 10


def test_a_sweep_in_a_config_file_keeps_every_job(out_dir: Path, tmp_path: Path):
    # hydra.sweeper.params in an experiment: no `a=1,2` on the command line, yet each job trains
    # into its own run dir, named by Hydra's own state (the job's swept overrides); the command
    # line's fixed keys (experiment, paths.out, ...) stay out of the name
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "widths.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.out_dim: 16,32\n"
    )
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths) == 0
    args = ("--config-dir", str(tmp_path / "conf"), "experiment=widths", "-m")
    assert twotower("train", *SMALL, paths, *args, "seed=0,1") == 0
    sample = out_dir / "synthetic" / "sample" / "inbatch"
    runs = sorted(p.parent.parent.name for p in sample.glob("*/train/model.pt"))
    assert runs == [f"dssm-model.out_dim={d},seed={s}" for d in (16, 32) for s in (0, 1)]
