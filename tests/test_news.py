"""`dataset=news`: the exposure log's cleaning rules (every dropped row counted), the day-based
split with train-only statistics, exposures as negatives, candidates in evaluation, and a DSSM
that beats popularity on day 7 of a log with planted preferences."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import read_json, twotower
from fixtures_news import DAYS, START, write_news

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.news import load, read_docs, top_keywords, top_share
from twotower_cli.data.split import DAY, temporal_bounds
from twotower_cli.data.tables import encode_side
from twotower_cli.retrieval.search import popularity_ranking, search
from twotower_cli.samplers import add_exposure_negatives


@pytest.fixture(scope="module")
def news_dir(tmp_path_factory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("news")
    planted = write_news(raw, n_users=200, expos_per_day=12)
    return raw, planted


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


def test_distribution_strings_keep_the_largest_share():
    dist = pd.Series(["A_0_24:0.40,A_25_29:0.06,A_30_39:0.52,A_40+:0.02", None,
                      "female:0.33,male:0.67"])  # fmt: skip
    assert top_share(dist).tolist()[0] == "A_30_39"
    assert pd.isna(top_share(dist).iloc[1])
    assert top_share(dist).iloc[2] == "male"
    words = top_keywords(pd.Series(["a:0.1,b:0.9,c:0.5", None]), 2)
    assert words.tolist() == [["b", "c"], []]


def test_cleaning_rules_on_the_raw_tables(news_dir):
    raw_dir, _ = news_dir
    raw = load(raw_dir, candidate_days=30)
    users_file = pd.read_csv(raw_dir / "user_info_data_5w.csv", sep="\t", dtype=str)
    # user row 3 lost its province: forward-filled from row 2
    users = raw.users.set_index("user_id")
    assert users.loc[users_file["user_id"][3], "province"] == users_file["province"][2]
    unknown = load(raw_dir, fill="unknown").users.set_index("user_id")
    assert pd.isna(unknown.loc[users_file["user_id"][3], "province"])
    counts: dict = {}
    docs = read_docs(raw_dir / "doc_info.txt", 0, counts).set_index("article_id")
    doc_file = pd.read_csv(raw_dir / "doc_info.txt", sep="\t", dtype=str, on_bad_lines="skip")
    aid = doc_file["article_id"]
    # the fixture blanked these rows: img_num "abc" -> 0, no cate -> 其他, no title -> length 0
    assert (docs.loc[aid[[100, 101, 102, 103]], "img_num"] == 0).all()
    assert (docs.loc[aid[[110, 111, 112, 113, 114]], "cate"] == "其他").all()
    assert (docs.loc[aid[[130, 131, 132]], "title_len"] == 0).all()
    assert pd.isna(docs.loc[aid[120], "sub_cate"])
    assert "900001" not in docs.index  # ctime "Android": dropped
    # ctime is read in seconds
    assert docs.loc[aid[0], "ctime"] == int(doc_file["ctime"][0]) // 1000
    # candidates: created in the 30 days up to the window's end; 40 articles a day -> 1200
    assert len(raw.candidates) == 30 * 40
    log = raw.interactions
    long_read = (log["click"] == 1) & (log["duration"] >= 60)
    assert long_read.sum() > 0
    assert (log["long_read"] == long_read.astype(np.int8)).all()
    assert log["timestamp"].min() >= START and log["timestamp"].max() < START + DAYS * DAY


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


def test_candidate_ids_map_index_rows_and_restrict_popularity():
    # counts of items 1..5 = [5, 0, 9, 2, 7]; candidates {2, 4, 5} -> 5 (7), 4 (2), 2 (0)
    counts = np.array([5, 0, 9, 2, 7])
    ranked = popularity_ranking(counts, n_users=2, depth=3, ids=np.array([2, 4, 5]))
    assert ranked.tolist() == [[5, 4, 2], [5, 4, 2]]
    # an index over candidates 2, 4, 5: row i is item ids[i]
    vectors = np.eye(3, dtype=np.float32)
    index = faiss.IndexFlatIP(3)
    index.add(vectors)
    found = search(index, np.array([[0.1, 0.2, 0.9]], np.float32), 3, ids=np.array([2, 4, 5]))
    assert found.tolist() == [[5, 4, 2]]


def test_temporal_bounds_count_back_from_the_window_end():
    # end 10 days; test 1 day -> starts at day 9; valid 0.5 day -> starts at 8.5 days
    assert temporal_bounds(pd.Series([0, 5]), 0.5, 1, end=10 * DAY) == (
        int(8.5 * DAY), 9 * DAY, 10 * DAY)  # fmt: skip
    assert temporal_bounds(pd.Series([0, 99]), 0, 0)[2] == 100  # default: last + 1


def test_fit_keys_limit_vocabularies_and_statistics():
    frame = pd.DataFrame({"k": [1, 2, 3], "c": ["x", "y", "z"], "n": [1.0, 3.0, 100.0]})
    out, vocabs, _ = encode_side(frame, "k", {"c": "categorical", "n": "numeric"}, "id", [1, 2])
    assert vocabs["c"] == ["x", "y"] and out["c"].tolist() == [1, 2, 0]
    # mean of 1 and 3 = 2, sample std = sqrt(2) -> (100 - 2) / sqrt(2)
    assert vocabs["n"] == pytest.approx([2.0, 2**0.5])
    assert out["n"].iloc[2] == pytest.approx(98 / 2**0.5, rel=1e-5)


@pytest.mark.parametrize(
    ("breakage", "pieces"),
    [
        ("no log", ["train_data_5w.csv", "file not found"]),
        ("no ctime column", ["doc_info.txt", "no column 'ctime'"]),
    ],
)
def test_news_bad_input(news_dir, tmp_path: Path, capsys, breakage, pieces):
    src, _ = news_dir
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in src.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    if breakage == "no log":
        (raw / "train_data_5w.csv").unlink()
    else:
        docs = pd.read_csv(raw / "doc_info.txt", sep="\t", dtype=str, on_bad_lines="skip")
        docs.drop(columns="ctime").to_csv(raw / "doc_info.txt", sep="\t", index=False)
    out = tmp_path / "outputs"
    assert twotower("preprocess", "dataset=news", f"dataset.load.raw_dir={raw}",
                    f"paths.out={out}") == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert all(p in err[0] for p in pieces), err[0]
    assert not (out / "news").exists()


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
