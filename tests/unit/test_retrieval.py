"""The exact and chunked evaluation searches against plain deep searches, and the sorted-key
helpers against numpy (library tests, no CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import unit_vectors

from twotower_cli.core.keys import sorted_unique
from twotower_cli.retrieval.search import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    exact_top_unseen,
    index_top_unseen,
    sample_users,
    search,
    subset_ids,
)

KS = [1, 5, 20]


def test_exact_path_matches_a_deep_faiss_search(small):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    ev = EvalSet.build(parts["test"], seen, enc.n_items)
    items, u = unit_vectors(enc.n_items, 2), unit_vectors(len(ev.users), 3)
    index = build_index(items, "Flat")
    masked = exact_top_unseen(items, u, ev.exclude, 20, enc.n_items)
    deep = evaluate_ranked(search(index, u, enc.n_items), ev, [20], enc.n_items)
    assert evaluate_index(index, u, ev, [20], enc.n_items) == pytest.approx(deep, abs=1e-9)
    # no ranked item is one of that user's seen items
    width = enc.n_items + 1
    keys = np.arange(len(u))[:, None] * width + masked
    assert not np.isin(keys[masked > 0], ev.exclude).any()


def test_chunked_search_of_an_approximate_index_matches_one_deep_search(small, monkeypatch):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    ev = EvalSet.build(parts["test"], seen, enc.n_items)
    items, u = unit_vectors(enc.n_items, 4), unit_vectors(len(ev.users), 5)
    # HNSW takes the chunked path (no exact vectors); tiny chunks force many of them
    index = build_index(items, "HNSW8", ef_search=64)
    monkeypatch.setattr("twotower_cli.retrieval.search.CHUNK_ELEMS", 2000)
    chunked = evaluate_index(index, u, ev, KS, enc.n_items)
    deep = evaluate_ranked(search(index, u, enc.n_items), ev, KS, enc.n_items)
    assert chunked == pytest.approx(deep, abs=1e-9)


def test_user_with_fewer_unseen_items_than_k_pads_with_minus_one():
    # 3 items; user row 0 has seen items 1 and 2, so only item 3 is left for k = 2
    items = np.eye(3, dtype=np.float32)
    u = np.array([[1.0, 0.5, 0.0]], dtype=np.float32)
    exclude = np.array([0 * 4 + 1, 0 * 4 + 2])
    assert exact_top_unseen(items, u, exclude, 2, 3).tolist() == [[3, -1]]


def test_sorted_unique_matches_np_unique():
    x = np.array([5, 3, 5, -1, 0, 3, 3])
    assert sorted_unique(x).tolist() == [-1, 0, 3, 5]
    assert sorted_unique(np.zeros(0, np.int64)).tolist() == []


def test_evalset_from_seen_batches_equals_one_frame(small):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    whole = EvalSet.build(parts["test"], seen, enc.n_items)
    # the seen rows in uneven batches, as evaluate reads them (artifacts.iter_seen)
    cuts = [0, 7, 300, len(seen)]
    batches = (seen.iloc[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
    streamed = EvalSet.build(parts["test"], batches, enc.n_items)
    for name in ("users", "truth", "n_truth", "exclude"):
        assert np.array_equal(getattr(whole, name), getattr(streamed, name)), name
    assert whole.max_exclude == streamed.max_exclude
    # a seen row of a user with no held-out row is never kept
    assert len(whole.exclude) < len(seen)


def test_sampled_users_score_as_the_held_out_rows_of_those_users(small):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    test = parts["test"]
    all_users = sorted_unique(test["user"].to_numpy())
    some = sample_users(all_users, 5, seed=3)
    assert len(some) == 5 and np.array_equal(some, np.sort(some))
    assert np.isin(some, all_users).all()
    assert np.array_equal(sample_users(all_users, 5, seed=3), some)  # seeded
    assert not np.array_equal(sample_users(all_users, 5, seed=4), some)
    assert sample_users(all_users, 0, seed=3) is all_users  # 0 = every user
    assert sample_users(all_users, len(all_users) + 1, seed=3) is all_users
    sampled = EvalSet.build(test, seen, enc.n_items, some)
    only = EvalSet.build(test[test["user"].isin(some)], seen, enc.n_items)
    for name in ("users", "truth", "n_truth", "exclude"):
        assert np.array_equal(getattr(sampled, name), getattr(only, name)), name


def test_whole_catalogue_ids_take_the_exact_path(small):
    enc, parts = small
    n = enc.n_items
    assert subset_ids(np.arange(1, n + 1), n) is None
    assert subset_ids(np.arange(1, n), n) is not None  # a pool: one item missing
    assert subset_ids(np.arange(n, 0, -1), n) is not None  # rows in another order
    # the exact path and the chunked faiss search over the same ids rank alike
    seen = pd.concat([parts["train"], parts["valid"]])
    ev = EvalSet.build(parts["test"], seen, n)
    items, u = unit_vectors(n, 6), unit_vectors(len(ev.users), 7)
    index = build_index(items, "Flat")
    ids = np.arange(1, n + 1)
    via_ids = index_top_unseen(index, u, ev, 20, n, ids=ids)
    exact = index_top_unseen(index, u, ev, 20, n, ids=subset_ids(ids, n))
    assert np.array_equal(via_ids, exact)
