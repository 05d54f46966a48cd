"""Artifacts you can trust (issue 18): a checkpoint names only a registered tower with plain
arguments, every changed byte of an output is caught by its manifest's hash, stages read one
chain, a failed run never replaces a finished model, and one writer holds a stage dir."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, read_json, twotower

from twotower_cli.artifacts import checkpoint
from twotower_cli.artifacts.store import LOCK, MANIFEST, verify
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.training import trainer

ROOT = ("synthetic", "sample", "inbatch", "dssm")
STAGES = ("preprocess", "sample", "train", "embed", "index")


@pytest.fixture
def run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared small run (paths.out), safe to break."""
    out = tmp_path / "outputs"
    shutil.copytree(small_run, out)
    return out


def one_line_error(capsys) -> str:
    """The one error line (progress bars of a stage that ran before failing aside)."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("twotower")]
    assert len(err) == 1, err
    return err[0]


def test_a_malicious_checkpoint_runs_nothing(run_copy: Path, tmp_path: Path, capsys):
    # the probe of issue 18: only dicts, strings and tensors, naming code to run on load
    marker = tmp_path / "pwned.txt"
    model_pt = run_copy.joinpath(*ROOT, "train", "model.pt")
    good = torch.load(model_pt, weights_only=True)
    evil_args = {"_target_": "numpy.savetxt", "fname": str(marker), "X": torch.zeros(1)}
    for tower, args in (("numpy.savetxt", {"fname": str(marker)}), ("dssm", evil_args)):
        torch.save({**good, "tower": tower, "args": args}, model_pt)
        with pytest.raises(TwoTowerError, match="does not rebuild its model"):
            checkpoint.load(model_pt)
    assert not marker.exists()
    # the file is also not what train wrote: the stage refuses it before even loading it
    assert twotower("embed", *SMALL, f"paths.out={run_copy}") == 2
    assert "model.pt: missing, truncated or changed" in one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("stage", "name", "reader"),
    [("train", "model.pt", "embed"), ("embed", "item_vectors.npy", "index"),
     ("index", "items.faiss", "evaluate"), ("preprocess", "train.parquet", "sample")],
)  # fmt: skip
def test_a_flipped_byte_makes_the_next_stage_exit_2(run_copy, stage, name, reader, capsys):
    stage_dir = run_copy / "synthetic" / "preprocess" if stage == "preprocess" else (
        run_copy.joinpath(*ROOT, stage))  # fmt: skip
    data = bytearray((stage_dir / name).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(
        b ^ 0xFF for b in data[len(data) // 2 :][:64]
    )
    (stage_dir / name).write_bytes(bytes(data))
    assert twotower(reader, *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert f"{stage_dir / name}: missing, truncated or changed" in line
    assert f"rerun `twotower {stage}`" in line


def test_a_truncated_manifest_names_the_command(run_copy: Path, capsys):
    manifest = run_copy.joinpath(*ROOT, "index", MANIFEST)
    manifest.write_text(manifest.read_text()[:40])
    assert twotower("evaluate", *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert f"{manifest}: unreadable" in line and "rerun `twotower index`" in line


def test_evaluate_after_a_retrain_without_embed_and_index_exits_2(run_copy: Path, capsys):
    paths = f"paths.out={run_copy}"
    assert twotower("train", *SMALL, paths, "train.epochs=1") == 0
    capsys.readouterr()
    assert twotower("evaluate", *SMALL, paths, "train.epochs=1") == 2
    line = one_line_error(capsys)
    assert "was made from another train output" in line and "rerun `twotower embed`" in line


def test_a_failed_train_leaves_the_finished_model_intact(run_copy: Path, monkeypatch, capsys):
    model_pt = run_copy.joinpath(*ROOT, "train", "model.pt")
    before = model_pt.read_bytes()
    assert twotower("train", *SMALL, f"paths.out={run_copy}", "train.lr=1e6") == 2
    assert "train.lr must be <= 10.0" in one_line_error(capsys)
    # a loss that turns non-finite mid-training stops it; nothing replaces the old model
    monkeypatch.setattr(trainer.distributed, "total", lambda total, group: float("nan"))
    assert twotower("train", *SMALL, f"paths.out={run_copy}", "train.resume=never") == 2
    assert "the loss became nan in epoch 1" in one_line_error(capsys)
    assert model_pt.read_bytes() == before
    verify(model_pt.parent, "train")  # still complete and intact


def test_a_second_writer_fails_fast_and_dead_partials_are_cleaned(run_copy: Path, capsys):
    index_dir = run_copy.joinpath(*ROOT, "index")
    dead = index_dir / ".partial-1-deadbeef"
    dead.mkdir()
    (dead / "items.faiss").write_bytes(b"half")
    with open(index_dir / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert twotower("index", *SMALL, f"paths.out={run_copy}") == 2
        assert "another twotower process is writing it" in one_line_error(capsys)
    assert dead.exists()  # the failed writer touched nothing of the holder's
    verify(index_dir, "index")
    assert twotower("index", *SMALL, f"paths.out={run_copy}") == 0
    assert not dead.exists() and not list(index_dir.glob(".partial-*"))
    assert read_json(index_dir / MANIFEST)["upstream"]["embed"]


def test_manifests_record_hashes_and_one_chain(small_run: Path):
    manifests = {s: read_json((small_run / "synthetic" / "preprocess" if s == "preprocess"
                               else small_run.joinpath(*ROOT[:3]) if s == "sample"
                               else small_run.joinpath(*ROOT, s)) / MANIFEST)
                 for s in STAGES}  # fmt: skip
    for stage, m in manifests.items():
        assert m["stage"] == stage and len(m["id"]) == 32 and m["peak_rss_gib"] > 0
        for entry in m["outputs"].values():
            assert len(entry["sha256"]) == 64 and entry["bytes"] >= 0
    ids = {s: m["id"] for s, m in manifests.items()}
    assert manifests["index"]["upstream"] == {s: ids[s] for s in STAGES[:4]}
    assert manifests["train"]["upstream"] == {s: ids[s] for s in STAGES[:2]}
    assert json.loads(json.dumps(manifests["embed"]["upstream"]))["train"] == ids["train"]
    assert np.isfinite(manifests["preprocess"]["seconds"])


@pytest.mark.parametrize(
    ("stage", "name", "reader"),
    [("train", "model.pt", "embed"), ("index", "items.faiss", "evaluate"),
     ("preprocess", "test.parquet", "embed")],
)  # fmt: skip
def test_a_truncated_artifact_makes_the_next_stage_exit_2(run_copy, stage, name, reader, capsys):
    stage_dir = run_copy / "synthetic" / "preprocess" if stage == "preprocess" else (
        run_copy.joinpath(*ROOT, stage))  # fmt: skip
    data = (stage_dir / name).read_bytes()
    (stage_dir / name).write_bytes(data[: len(data) // 3])
    assert twotower(reader, *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert f"{stage_dir / name}: missing, truncated or changed" in line
    assert f"rerun `twotower {stage}`" in line
