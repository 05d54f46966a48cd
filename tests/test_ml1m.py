"""MovieLens-1M's loader and the protocols end to end, on a tiny fixture in the wheel's atomic
format (tests/data/ml1m_tiny: CRLF lines, `1m_` user prefixes, items keyed by title); the real
download is never used here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import read_json, twotower

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data import movielens1m

TINY = Path(__file__).resolve().parent / "data" / "ml1m_tiny"


def test_the_wheels_copy_parses_to_grouplens_ids_and_features():
    raw = movielens1m.load(TINY, verify=False)
    # 174 ratings by 15 users of 13 of the 14 movies (Nosferatu, row 13, is never rated)
    assert raw.counts == {"ratings": 174, "users": 15, "items": 14, "rated_items": 13}
    inter, users, items = raw.interactions, raw.users, raw.items
    assert sorted(inter["user_id"].unique()) == list(range(1, 16))  # `1m_` dropped
    # items numbered by their row in ml-1m.item: Shaft (2000), row 14, rated by users 1..3
    assert sorted(inter.loc[inter["item_id"] == 14, "user_id"]) == [1, 2, 3]
    u2 = users.set_index("user_id").loc[2]  # 1m_2: age 25 -> group 2, M, zip "18642" -> "18"
    assert (u2["age"], u2["gender"], u2["zip"]) == (2, "M", "18")
    heat = items.set_index("item_id").loc[3]  # "Action Crime Thriller", 1995 -> 5-year bucket
    assert heat["genres"] == ["Action", "Crime", "Thriller"] and heat["year"] == 1995
    assert items.set_index("item_id").loc[4, "year"] == 1940  # 1942: decades before 1990


def test_verify_names_the_source_and_the_counts_it_found():
    with pytest.raises(TwoTowerError, match=r"ml1m_tiny/ml-1m: counts \{'ratings': 174"):
        movielens1m.load(TINY)


def test_an_unknown_title_is_one_line_naming_file_and_row(tmp_path: Path):
    copy = tmp_path / "ml-1m"
    shutil.copytree(TINY / "ml-1m", copy)
    with (copy / "ml-1m.inter").open("a") as f:
        f.write("1m_1\tNo Such Film (1999)\t4\t978300000\n")
    with pytest.raises(TwoTowerError, match=r"ml-1m.inter: row 176 names an item missing from "
                       r"ml-1m.item: 'No Such Film \(1999\)'"):  # fmt: skip
        movielens1m.load(tmp_path, verify=False)


@pytest.mark.slow
def test_recbole_protocol_end_to_end_counts_the_filters(tmp_path: Path):
    out = tmp_path / "outputs"
    args = ["dataset=ml1m", f"dataset.load.raw_dir={TINY}", "dataset.load.verify=false",
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
    args = ["dataset=ml1m", f"dataset.load.raw_dir={TINY}", "dataset.load.verify=false",
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
