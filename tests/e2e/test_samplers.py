"""Negative samplers: drawn distributions, exclusions, seeds, logQ columns, streaming estimate,
and every sampler end to end on the small generated data set."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SMALL, options, read_json, twotower

# one torch thread: on a small data set, more threads only contend with each other
ONE_THREAD = "threads=1"


MODELS = options("model")


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["sampler=random"],
        ["sampler=popularity", "sampler.mode=rank", "loss=sampled_softmax"],
        ["sampler=hard"],
        ["sampler=inbatch", "sampler.logq=streaming"],
        ["sampler=mixed", "sampler.n_uniform=64"],
        ["sampler=full"],
    ],
    ids=lambda o: "-".join(o),
)
@pytest.mark.parametrize("model", MODELS)
def test_sampler_runs_end_to_end_with_every_tower(out_dir: Path, overrides: list[str], model):
    args = (*SMALL, ONE_THREAD, f"paths.out={out_dir}", f"model={model}", *overrides)
    assert twotower("run", *args) == 0
    sampler = overrides[0].split("=")[1]
    root = out_dir / "synthetic" / "sample" / sampler
    sample = read_json(root / "manifest.json")["figures"]
    assert sample["n_neg"] == (4 if sampler in ("random", "popularity", "hard") else 0)
    metrics = read_json(root / model / "evaluate" / "metrics.json")
    assert metrics["model"]["recall@20"] > 0.5 * metrics["popularity"]["recall@20"]


@pytest.mark.slow
def test_mined_hard_negatives_run_after_their_source_run(out_dir: Path, capsys):
    paths = f"paths.out={out_dir}", ONE_THREAD
    assert twotower("run", *SMALL, *paths, "sampler=hard", "sampler.kind=mined") == 2
    assert "no embeddings at" in capsys.readouterr().err
    assert twotower("run", *SMALL, *paths) == 0
    assert twotower("run", *SMALL, *paths, "sampler=hard", "sampler.kind=mined") == 0
    train = read_json(
        out_dir / "synthetic" / "sample" / "hard" / "dssm" / "train" / "manifest.json"
    )
    assert train["figures"]["loss"] == "bce"
