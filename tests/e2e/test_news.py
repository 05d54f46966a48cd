"""`dataset=news`: the exposure log's cleaning rules (every dropped row counted), the day-based
split with train-only statistics, exposures as negatives, candidates in evaluation, and a DSSM
that beats popularity on day 7 of a log with planted preferences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import read_json, twotower
from fixtures_news import START

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.split import DAY
from twotower_cli.samplers import add_exposure_negatives


@pytest.fixture(scope="module")
def prepared(news_dir, tmp_path_factory) -> tuple[Path, dict]:
    raw, planted = news_dir
    out = tmp_path_factory.mktemp("out")
    assert twotower("preprocess", "dataset=news", f"dataset.load.raw_dir={raw}",
                    f"paths.out={out}") == 0  # fmt: skip
    return out / "news" / "preprocess", planted


def test_every_dropped_or_repaired_row_is_counted(prepared):
    prep, planted = prepared
    figures = read_json(prep / "manifest.json")["figures"]
    for name, n in planted.items():
        assert figures[name] == n, name
    dropped = sum(v for k, v in figures.items() if k.startswith("log_dropped_"))
    assert figures["log_kept"] == planted["log_rows"] - dropped
    # nothing more is lost after the loader: every kept row has known ids
    assert figures["dropped_unknown_id"] == 0


def test_day_split_train_statistics_and_candidates(prepared):
    prep, _ = prepared
    parts = {n: pd.read_parquet(prep / f"{n}.parquet") for n in ("train", "valid", "test")}
    test_start = START + 6 * DAY
    assert parts["test"]["timestamp"].min() >= test_start
    assert parts["valid"]["timestamp"].min() >= test_start - DAY // 2
    assert parts["valid"]["timestamp"].max() < test_start
    assert parts["train"]["timestamp"].max() < test_start - DAY // 2
    assert {"click", "long_read"} <= set(parts["train"].columns)
    # the section that starts on day 7 is unknown to the vocabulary fitted on train
    vocabs = read_json(prep / "vocabs.json")
    assert "突发/0" not in vocabs["item"]["sub_cate"]
    items = pd.read_parquet(prep / "items.parquet")
    item_vocab = vocabs["item"]["item"]
    # title_len is scaled by the mean and std of the articles seen before validation
    mean, std = vocabs["item"]["title_len"]
    seen = pd.concat([parts["train"], pd.read_parquet(prep / "exposures.parquet")])
    assert set(seen["item"]) <= set(items["item"])
    raw_len = items["title_len"].to_numpy() * std + mean
    train_items = np.unique(seen["item"].to_numpy()) - 1
    assert abs(raw_len[train_items].mean() - mean) < 1e-3
    candidates = np.load(prep / "candidates.npy")
    # the pool limits the ranking, not the truth: test clicks outside it are kept and counted
    outside = ~np.isin(parts["test"]["item"], candidates)
    figures = read_json(prep / "manifest.json")["figures"]
    assert figures["test_outside_candidates"] == outside.sum()
    assert len(candidates) <= len(item_vocab)


def test_exposures_are_earlier_non_clicks_and_mix_in_as_negatives(prepared, tmp_path: Path):
    prep, _ = prepared
    expo = pd.read_parquet(prep / "exposures.parquet")
    train = pd.read_parquet(prep / "train.parquet")
    assert (expo["click"] == 0).all()
    assert expo["timestamp"].max() < START + 6 * DAY - DAY // 2  # nothing from valid/test
    n1 = train["item"].max() + expo["item"].max() + 1
    assert not np.isin(expo["user"] * n1 + expo["item"], train["user"] * n1 + train["item"]).any()
    examples = train[["user", "item"]]
    sampled = np.full((len(train), 4), -1)  # stand-ins for the sampler's own negatives
    mixed, n = add_exposure_negatives(examples, sampled, prep / "exposures.parquet", 1.0, 0)
    assert mixed.shape == (len(train), 5) and (mixed[:, :4] == -1).all()
    # equal in number to the positives by default (every fixture user has exposures)
    assert n == len(train) == (mixed[:, 4] > 0).sum()
    # each exposure negative was shown to that row's user
    shown = set(zip(expo["user"], expo["item"], strict=True))
    picked = mixed[:, 4] > 0
    assert set(zip(train["user"][picked], mixed[picked, 4], strict=True)) <= shown
    half, n_half = add_exposure_negatives(examples, sampled, prep / "exposures.parquet", 0.5, 0)
    assert n_half == round(0.5 * len(train)) == (half[:, 4] > 0).sum()
    with pytest.raises(TwoTowerError, match="no explicit negatives"):
        add_exposure_negatives(examples, None, prep / "exposures.parquet", 1.0, 0)


def test_use_exposures_needs_explicit_negatives(prepared, capsys):
    prep, _ = prepared
    out = prep.parent.parent
    args = ["dataset=news", f"paths.out={out}", "exposures.use=true"]
    assert twotower("sample", *args, "sampler=inbatch") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exposures.use" in err[0]
    assert not (out / "news" / "sample" / "inbatch").exists()
    assert twotower("sample", *args, "sampler=random") == 0
    figures = read_json(out / "news" / "sample" / "random" / "manifest.json")["figures"]
    n_pos = len(pd.read_parquet(prep / "train.parquet"))
    # random: 4 sampled negatives per positive, plus one exposure per positive
    assert (figures["examples"], figures["n_neg"]) == (n_pos, 4 + 1)
    assert figures["exposure_negatives"] == n_pos


@pytest.mark.slow
def test_dssm_beats_popularity_on_day_seven(news_dir, tmp_path: Path):
    raw, _ = news_dir
    out = tmp_path / "outputs"
    args = [
        "dataset=news", f"dataset.load.raw_dir={raw}", f"paths.out={out}",
        # fresh news: the three days before the window's end are the candidates
        "dataset.load.candidate_days=3", "sampler=random", "exposures.use=true",
        # exposures as extra negative columns: validation dips for a few epochs before it
        # climbs, so no early stop here
        "train.epochs=30", "train.patience=30", "train.batch_size=32", "model.embed_dim=16",
        "model.hidden=[64]", "model.out_dim=32", "threads=1",
    ]  # fmt: skip
    assert twotower("run", *args) == 0
    metrics = read_json(out / "news" / "sample" / "random" / "dssm" / "evaluate" / "metrics.json")
    model, pop = metrics["model"], metrics["popularity"]
    assert model["recall@20"] > 1.5 * pop["recall@20"]
    assert model["hit_rate@20"] > pop["hit_rate@20"] + 0.1
    # every ranked article is a candidate: coverage of the whole catalogue stays below 3 days'
    prep = out / "news" / "preprocess"
    n_items = read_json(prep / "manifest.json")["figures"]["n_items"]
    assert model["coverage@50"] <= len(np.load(prep / "candidates.npy")) / n_items
