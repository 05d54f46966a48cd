"""The exact and chunked evaluation searches against plain deep searches, and the sorted-key
helpers against numpy (library tests, no CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import unit_vectors

from twotower_cli.keys import sorted_unique
from twotower_cli.retrieval import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    exact_top_unseen,
    search,
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
    monkeypatch.setattr("twotower_cli.retrieval.CHUNK_ELEMS", 2000)
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
