"""MovieLens-1M's loader and the protocols end to end, on a tiny fixture in the wheel's atomic
format (tests/data/ml1m_tiny: CRLF lines, `1m_` user prefixes, items keyed by title); the real
download is never used here."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_json, twotower
from helpers import ML1M_TINY


@pytest.mark.slow
def test_recbole_protocol_end_to_end_counts_the_filters(tmp_path: Path):
    out = tmp_path / "outputs"
    args = ["dataset=ml1m", f"dataset.load.raw_dir={ML1M_TINY}", "dataset.load.verify=false",
            "protocol=recbole", "train.epochs=2", "threads=1", f"paths.out={out}"]  # fmt: skip
    assert twotower("run", *args) == 0
    prep = read_json(out / "ml1m-recbole" / "preprocess" / "manifest.json")["figures"]
    # 146 ratings >= 3. Pass 1 bans user 15 (3 positives) and Shaft (3: users 1..3), pass 2
    # none: 140 left; every other user keeps 10 (2 of their 12 movies are rated 2, where
    # (user + row) % 6 == 0 in the fixture's generator), so each splits 8:1:1.
    assert prep["protocol"] == "recbole" and prep["protocol_positives"] == 146
    assert (prep["kcore_interactions"], prep["kcore_users"], prep["kcore_items"]) == (140, 14, 12)
    assert prep["kcore_passes"] == 2 and (prep["n_users"], prep["n_items"]) == (14, 12)
    assert (prep["train"], prep["valid"], prep["test"]) == (112, 14, 14)
    assert "tasks_train" not in prep  # multi-task tables follow the data set's own label only
    run = out / "ml1m-recbole" / "sample" / "inbatch" / "dssm" / "evaluate" / "metrics.json"
    metrics = read_json(run)
    assert {"recall@10", "mrr@10", "ndcg@10", "hit_rate@10", "precision@10"} <= set(
        metrics["ease"]
    )


@pytest.mark.slow
def test_deepmatch_masks_nothing(tmp_path: Path):
    out = tmp_path / "outputs"
    args = ["dataset=ml1m", f"dataset.load.raw_dir={ML1M_TINY}", "dataset.load.verify=false",
            "protocol=deepmatch", "train.epochs=1", "threads=1", f"paths.out={out}",
            "eval.ks=[13]"]  # fmt: skip
    assert twotower("run", *args) == 0
    prep = read_json(out / "ml1m-deepmatch" / "preprocess" / "manifest.json")["figures"]
    # every rating counts; the catalogue is the 13 rated movies; one test item per user
    assert (prep["positives"], prep["n_items"], prep["test"]) == (174, 13, 15)
    # loo's sequence tower and full softmax (conf/protocol/deepmatch.yaml)
    metrics = read_json(out / "ml1m-deepmatch" / "sample" / "full" / "dssm" / "evaluate"
                        / "metrics.json")  # fmt: skip
    # nothing masked: a top 13 of 13 movies holds every user's test movie
    assert metrics["model"]["hit_rate@13"] == 1.0 and metrics["popularity"]["hit_rate@13"] == 1.0
