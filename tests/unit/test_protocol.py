"""Protocols (data/protocol.py): RecBole's split rounding, the iterated k-core, the seeded
shuffle, leave-one-out, and their effect on preprocess's tables and counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.engine import Engine
from twotower_cli.data.preprocess import SplitSettings, preprocess
from twotower_cli.data.protocol import (
    ProtocolSettings,
    k_core,
    loo_counts,
    ratio_counts,
    shuffle_rank,
)
from twotower_cli.data.tables import RawData

RECBOLE = dict(name="recbole", positives="rating", min_rating=3, split="ratio", seed=2020)


def test_ratio_counts_follow_recbole_rounding():
    # n=10: int(1.0)=1 valid, 1 test, train 8. n=19: int(1.9)=1 each, train 17.
    # n=3: int(0.3)=0 each, train 3; test bumped (0 < 0.3 < 1, train 3 > 1) -> train 2, then
    # valid bumped (train 2 > 1) -> train 1. n=2: test bumped -> train 1, then train <= 1: stop.
    train, valid = ratio_counts(np.array([10, 19, 3, 2, 1]), [0.8, 0.1, 0.1])
    assert train.tolist() == [8, 17, 1, 1, 1] and valid.tolist() == [1, 1, 1, 0, 0]


def test_loo_counts():
    train, valid = loo_counts(np.array([1, 2, 3, 20]))
    assert train.tolist() == [1, 1, 1, 18] and valid.tolist() == [0, 0, 1, 1]


def test_k_core_iterates_to_the_fixed_point():
    # k=2. Pass 1: item 3 has one row -> out (rows A1 A2 B1 B2 C2 left). Pass 2: user C has one
    # row left -> out. Pass 3: A1 A2 B1 B2, every count 2: fixed. The rating-2 row is no positive.
    log = pd.DataFrame({"user_id": list("AABBCCA"), "item_id": [1, 2, 1, 2, 2, 3, 4],
                        "rating": [5, 4, 3, 5, 4, 4, 2]})  # fmt: skip
    with Engine() as eng:
        eng.frame("clean", log)
        before, passes = k_core(eng, "clean", '"rating" >= 3', 2)
        rows = eng.df("SELECT * FROM kcore ORDER BY user_id, item_id")
    assert (before, passes) == (6, 3)
    assert rows.values.tolist() == [["A", 1], ["A", 2], ["B", 1], ["B", 2]]


def test_shuffle_rank_is_torch_randperm_after_the_seed():
    torch.manual_seed(2020)
    perm = torch.randperm(50).numpy()
    rank = shuffle_rank(50, 2020)
    assert (rank[perm] == np.arange(50)).all()


def _log(n_users: int = 60, n_items: int = 40, seed: int = 0) -> RawData:
    rng = np.random.default_rng(seed)
    rows = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.5]
    log = pd.DataFrame(rows, columns=["user_id", "item_id"])
    log["rating"] = rng.integers(1, 6, len(log)).astype(np.float32)
    log["timestamp"] = rng.integers(0, 1000, len(log)) + 1_600_000_000
    log["like"] = (log["rating"] >= 4).astype(np.int8)
    users = pd.DataFrame({"user_id": np.arange(n_users + 2)})  # two users with no rating
    items = pd.DataFrame({"item_id": np.arange(n_items + 3)})  # three unrated items
    return RawData(log, users, items, {}, {})


def test_a_ratio_protocol_filters_then_splits_each_user_8_1_1():
    raw = _log()
    p = ProtocolSettings(**RECBOLE, k_core=10)
    enc, frames, counts = preprocess(raw, "like", SplitSettings(), protocol=p)
    kept = raw.interactions[raw.interactions["rating"] >= 3]
    assert counts["protocol_positives"] == len(kept)
    n = sum(len(frames[s]) for s in ("train", "valid", "test"))
    assert n == counts["kcore_interactions"] == counts["positives"]
    # the catalogue is the k-core's items only; rows of the encoded tables: padding + ids
    assert enc.n_items == counts["kcore_items"] and enc.n_users == counts["kcore_users"]
    sizes = pd.concat([frames[s].assign(part=s) for s in ("train", "valid", "test")])
    per_user = sizes.groupby(["user", "part"]).size().unstack(fill_value=0)
    total = per_user.sum(1).to_numpy()
    assert (total >= 10).all()  # the 10-core
    assert (per_user["test"].to_numpy() == total // 10).all()
    assert (per_user["valid"].to_numpy() == total // 10).all()
    # the same seed gives the same split; another seed another one
    _, again, _ = preprocess(raw, "like", SplitSettings(), protocol=p)
    _, other, _ = preprocess(raw, "like", SplitSettings(), protocol=ProtocolSettings(
        **{**RECBOLE, "seed": 1}, k_core=10))  # fmt: skip
    assert again["test"].equals(frames["test"]) and not other["test"].equals(frames["test"])


def test_leave_one_out_holds_out_each_users_last_two_by_time():
    raw = _log()
    p = ProtocolSettings(name="loo", positives="all", split="loo")
    enc, frames, counts = preprocess(raw, "like", SplitSettings(), protocol=p)
    assert counts["positives"] == len(raw.interactions)  # every rating
    assert enc.n_items == raw.interactions["item_id"].nunique()  # unrated items out
    test, valid, train = frames["test"], frames["valid"], frames["train"]
    assert test["user"].is_unique and valid["user"].is_unique
    last_train = train.groupby("user")["timestamp"].max()
    assert (valid.set_index("user")["timestamp"] >= last_train[valid["user"]].to_numpy()).all()
    assert (test.set_index("user")["timestamp"] >= valid.set_index("user")["timestamp"]).all()


def test_bad_protocol_values_are_one_line_naming_the_key():
    with pytest.raises(TwoTowerError, match="dataset.protocol.split: 'kfold' not in"):
        ProtocolSettings(split="kfold")
    with pytest.raises(TwoTowerError, match="dataset.protocol.ratios: three positive shares"):
        ProtocolSettings(ratios=[0.5, 0.5])
    raw = _log()
    raw.interactions = raw.interactions.drop(columns="rating")
    with pytest.raises(TwoTowerError, match="positives=rating: the log has no 'rating' column"):
        preprocess(raw, "like", SplitSettings(), protocol=ProtocolSettings(**RECBOLE))
