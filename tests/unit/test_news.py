"""`dataset=news`: the exposure log's cleaning rules (every dropped row counted), the day-based
split with train-only statistics, exposures as negatives, candidates in evaluation, and a DSSM
that beats popularity on day 7 of a log with planted preferences."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import twotower
from fixtures_news import DAYS, START

from twotower_cli.data.news import load, read_docs, top_keywords, top_share
from twotower_cli.data.split import DAY, temporal_bounds
from twotower_cli.data.tables import encode_side
from twotower_cli.retrieval.search import popularity_ranking, search


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
