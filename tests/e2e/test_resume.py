"""Runs that survive a crash (issue 12): `train` resumes after its last finished epoch and ends
where an uninterrupted run ends; a stage killed at any point leaves nothing that looks complete;
`run` redoes only what is missing or stale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, read_json, twotower

from twotower_cli.artifacts.store import MANIFEST, verify

ROOT = ("synthetic", "sample", "inbatch", "dssm")
# ~125 steps an epoch on one thread: long enough to kill the process between two epochs
# 16-row batches without the default's 1,024 uniform negatives a step (the kill needs epochs
# to take time, not minutes)
SLOW = [*SMALL, "train.batch_size=16", "train.epochs=12", "train.patience=12", "threads=1",
        "sampler.n_uniform=0"]  # fmt: skip
SCRIPT = Path(sys.executable).with_name("twotower")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def saved_epochs(state: Path) -> int:
    try:
        return len(torch.load(state, weights_only=True)["history"])
    except Exception:  # noqa: BLE001 -- not there yet
        return 0


@pytest.mark.slow
def test_killed_train_resumes_after_its_last_epoch_and_ends_as_uninterrupted(tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for out in (whole, killed):
        assert twotower("preprocess", *SLOW, f"paths.out={out}") == 0
        assert twotower("sample", *SLOW, f"paths.out={out}") == 0
    assert twotower("train", *SLOW, f"paths.out={whole}") == 0
    train_dir = killed.joinpath(*ROOT, "train")
    proc = start("train", *SLOW, f"paths.out={killed}")
    state = train_dir / ".resume" / "state.pt"
    deadline = time.time() + 240
    while saved_epochs(state) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = saved_epochs(state)
    assert 3 <= done < 12 and not (train_dir / MANIFEST).exists()
    capsys.readouterr()
    assert twotower("train", *SLOW, f"paths.out={killed}") == 0
    assert f"train: resuming after epoch {done}" in capsys.readouterr().out
    assert not (train_dir / ".resume").exists()  # the finished model supersedes it
    a = torch.load(whole.joinpath(*ROOT, "train", "model.pt"), weights_only=True)["state_dict"]
    b = torch.load(train_dir / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    ha = read_json(whole.joinpath(*ROOT, "train", "history.json"))
    hb = read_json(train_dir / "history.json")
    assert [h["valid_recall@20"] for h in ha] == [h["valid_recall@20"] for h in hb]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], abs=1e-9)


def test_a_resume_state_of_other_settings_is_not_used(tmp_path, capsys):
    paths = f"paths.out={tmp_path}"
    args = [*SMALL, "threads=1", paths]
    assert twotower("preprocess", *args) == 0 and twotower("sample", *args) == 0
    resume = tmp_path.joinpath(*ROOT, "train", ".resume")
    resume.mkdir(parents=True)
    torch.save({"fingerprint": "another run", "history": [{}] * 2}, resume / "state.pt")
    capsys.readouterr()
    assert twotower("train", *args) == 0
    out = capsys.readouterr().out
    assert "was made with other settings or inputs; starting over" in out
    assert len(read_json(tmp_path.joinpath(*ROOT, "train", "history.json"))) == 3


def test_run_skips_current_stages_and_redoes_stale_ones(tmp_path, capsys):
    paths = f"paths.out={tmp_path}"
    assert twotower("run", *SMALL, "threads=1", paths) == 0
    capsys.readouterr()
    dead = tmp_path / "synthetic" / "preprocess" / ".partial-1-deadbeef"  # a killed writer's
    dead.mkdir()
    assert twotower("run", *SMALL, "threads=1", paths) == 0
    out = capsys.readouterr().out
    for stage in ("preprocess", "sample", "train", "embed", "index", "evaluate"):
        assert f"{stage}: up to date" in out
    assert not dead.exists()  # a skipped stage's dir is swept of dead writers' leftovers
    # an index setting changes: index and evaluate are redone, nothing before them
    assert twotower("run", *SMALL, "threads=1", paths, "index.factory=HNSW16") == 0
    out = capsys.readouterr().out
    assert "train: up to date" in out and "embed: up to date" in out
    assert "index: done" in out and "evaluate: done" in out
    assert twotower("run", *SMALL, "threads=1", paths, "index.factory=HNSW16", "--force") == 0
    assert "up to date" not in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_stages_killed_at_random_points_leave_nothing_broken(tmp_path, seed):
    rng = np.random.default_rng(seed)
    paths = f"paths.out={tmp_path}"
    args = [*SMALL, "threads=1", paths]
    assert twotower("run", *args) == 0
    want = read_json(tmp_path.joinpath(*ROOT, "evaluate", "metrics.json"))
    dirs = {"preprocess": tmp_path / "synthetic" / "preprocess",
            "sample": tmp_path.joinpath(*ROOT[:3])}  # fmt: skip
    for stage in ("preprocess", "sample", "train", "embed", "index", "evaluate"):
        stage_dir = dirs.get(stage, tmp_path.joinpath(*ROOT, stage))
        proc = start(stage, *args)
        time.sleep(rng.uniform(0.5, 5.0))  # start-up (imports), work and writing all in reach
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if (stage_dir / MANIFEST).exists():
            verify(stage_dir, stage)  # whatever looks complete is complete and intact
    assert twotower("run", *args) == 0
    assert read_json(tmp_path.joinpath(*ROOT, "evaluate", "metrics.json")) == want
    assert not list(tmp_path.rglob(".partial-*"))
