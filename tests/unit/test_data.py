"""Encoders and the split, on hand-worked tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas_preprocess import hold_out_last, per_user_split

from twotower_cli.data import synthetic
from twotower_cli.data.tables import build_vocab, encode_multihot, encode_side, encode_values


def test_vocab_is_by_frequency_then_value_and_unknown_is_zero():
    vocab = build_vocab(pd.Series(["b", "a", "c", "a", None, "c"]))
    assert vocab == ["a", "c", "b"]  # a:2, c:2 (tie -> by value), b:1
    assert encode_values(pd.Series(["c", "zz", None, "a"]), vocab).tolist() == [2, 0, 0, 1]


def test_multihot_left_aligned_padded_and_unseen_dropped():
    vocab = ["x", "y", "z"]
    lists = pd.Series([["y", "x"], [], ["q", "z", "x", "y"]])
    assert encode_multihot(lists, vocab, 2).tolist() == [[2, 1], [0, 0], [3, 1]]


def test_encode_side_ids_follow_row_order_and_scale_numeric():
    frame = pd.DataFrame({"key": [10, 20, 30], "color": ["r", "g", "r"], "w": [1.0, 2.0, 3.0]})
    out, vocabs, specs = encode_side(frame, "key", {"color": "categorical", "w": "numeric"}, "uid")
    assert out["uid"].tolist() == [1, 2, 3] and vocabs["uid"] == [10, 20, 30]
    assert out["color"].tolist() == [1, 2, 1]
    # mean 2, sample std 1 -> -1, 0, 1
    assert np.allclose(out["w"], [-1.0, 0.0, 1.0])
    assert [(s.name, s.vocab_size) for s in specs] == [("uid", 4), ("color", 3), ("w", 0)]


def test_hold_out_last_rounds_and_skips_small_users():
    # user 1: 7 positives -> round(1.4) = 1 held out; user 2: 8 -> round(1.6) = 2; user 3: 4 < 5
    frame = pd.DataFrame(
        {
            "user": [1] * 7 + [2] * 8 + [3] * 4,
            "item": list(range(7)) + list(range(8)) + list(range(4)),
            "timestamp": list(range(7)) + [5] * 8 + list(range(4)),
        }
    )
    kept, out = hold_out_last(frame, 0.2, 5)
    assert out.groupby("user").size().to_dict() == {1: 1, 2: 2}
    # ties on timestamp (user 2) are ordered by item: the last two items go
    assert sorted(out[out.user == 2]["item"]) == [6, 7]
    assert len(kept) == 7 + 8 + 4 - 3
    parts = per_user_split(frame, 0.2, 0.2, 5)
    # user 1's remaining 6 -> round(1.2) = 1 to validation; user 2's 6 -> 1
    assert parts["valid"].groupby("user").size().to_dict() == {1: 1, 2: 1}


def test_synthetic_cache_returns_the_generated_tables(tmp_path: Path):
    args = dict(n_users=50, n_items=30, n_interactions=500, n_clusters=4, seed=3)
    first = synthetic.load(**args, cache_dir=str(tmp_path))
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert {p.name for p in folder.iterdir()} >= {"interactions.parquet", "items.parquet"}
    again = synthetic.load(**args, cache_dir=str(tmp_path))
    fresh = synthetic.load(**args, cache_dir=None)
    # the cached log stays on disk, for the preprocess engine to scan
    assert first.interactions == again.interactions
    assert again.interactions.rows == len(fresh.interactions)
    on_disk = pd.read_parquet(again.interactions.path)
    pd.testing.assert_frame_equal(fresh.interactions, on_disk)
    assert again.items["tags"].map(len).tolist() == [2] * 30
    # another seed is another cache entry
    synthetic.load(**{**args, "seed": 4}, cache_dir=str(tmp_path))
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_synthetic_pairs_are_unique_and_popularity_is_skewed():
    raw = synthetic.load(n_users=2000, n_items=1000, n_interactions=50_000, seed=0)
    inter = raw.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    counts = np.sort(np.bincount(inter["item_id"], minlength=1000))[::-1]
    # Zipf-like: the top 10% of items hold far more than 10% of the interactions
    assert counts[:100].sum() > 0.4 * counts.sum()


def test_synthetic_log_is_drawn_in_bounded_blocks_of_users():
    params = dict(n_users=500, n_items=300, n_interactions=20_000, n_clusters=8, zipf=1.0,
                  in_cluster=0.8, feature_noise=0.4, days=30, seed=0)  # fmt: skip
    users, items, blocks = synthetic.generate_chunks(**params, chunk=3000)
    blocks = list(blocks)
    assert len(blocks) >= 20_000 // 3000 and len(users) == 500 and len(items) == 300
    ranges = [(b["user_id"].min(), b["user_id"].max()) for b in blocks]
    # blocks hold disjoint, increasing user ranges: pairs stay unique across blocks
    assert all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False))
    log = pd.concat(blocks, ignore_index=True)
    keys = log["user_id"] * 300 + log["item_id"]
    assert keys.is_unique and keys.is_monotonic_increasing
    # a block is its users' draws (before repeated pairs collapse): at most chunk + one user's
    biggest_user = log.groupby("user_id").size().max()
    assert max(len(b) for b in blocks) <= 3000 + biggest_user
