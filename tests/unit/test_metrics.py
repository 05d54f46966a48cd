"""Ranking metrics and the evaluation protocol on hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from twotower_cli.core.errors import ConfigError
from twotower_cli.core.keys import pair_keys
from twotower_cli.retrieval.metrics import drop_excluded, ranking_metrics
from twotower_cli.retrieval.search import EvalSet, build_index, evaluate_index, popularity_ranking

N_ITEMS = 10


def keys(pairs):
    rows, items = np.array(pairs).T
    return np.unique(pair_keys(rows, items, N_ITEMS))


def test_metrics_by_hand():
    # user 0 holds out {1, 5}; user 1 holds out {7}
    top = np.array([[1, 2, 5], [3, 4, 6]])
    truth = keys([(0, 1), (0, 5), (1, 7)])
    m = ranking_metrics(top, truth, np.array([2, 1]), [1, 3], N_ITEMS)
    # @1: user0 hits item 1 -> recall 1/2, user1 misses -> 0; mean 0.25
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["precision@1"] == pytest.approx(0.5)  # (1/1 + 0/1) / 2
    # @3: user0 hits ranks 1 and 3 -> recall 2/2; user1 0 -> mean 0.5
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    # user0 DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG (2 relevant) = 1 + 1/log2(3)
    assert m["ndcg@3"] == pytest.approx((1.5 / (1 + 1 / math.log2(3)) + 0) / 2)
    assert m["hit_rate@3"] == pytest.approx(0.5)
    # coverage@3: items {1,2,5,3,4,6} of 10
    assert m["coverage@3"] == pytest.approx(0.6)
    # MRR (RecBole's): user0's first hit at rank 1 -> 1, user1 none -> 0; mean 0.5 at @1 and @3
    assert m["mrr@1"] == pytest.approx(0.5) and m["mrr@3"] == pytest.approx(0.5)


def test_mrr_counts_only_the_first_hit_within_k():
    # user 0 holds out {2, 6}: hits at ranks 2 and 3 -> 1/2 at @3, 0 at @1
    top = np.array([[1, 2, 6]])
    m = ranking_metrics(top, keys([(0, 2), (0, 6)]), np.array([2]), [1, 3], N_ITEMS)
    assert (m["mrr@1"], m["mrr@3"]) == (0.0, pytest.approx(0.5))


def test_drop_excluded_keeps_order_and_pads():
    ranked = np.array([[4, 2, 9, 1], [3, -1, 8, 7]])
    exclude = keys([(0, 2), (0, 4), (1, 3)])
    top = drop_excluded(ranked, exclude, N_ITEMS, 3)
    # user0 loses 4 and 2 -> [9, 1] then padding; user1 loses 3 and the faiss -1
    assert top.tolist() == [[9, 1, -1], [8, 7, -1]]


def test_evaluate_index_masks_seen_items_and_finds_the_rest():
    # items 1..4 on the axes of a 4-d space; user 1 looks like item 2 then item 3
    items = np.eye(4, dtype=np.float32)
    u = np.array([[0.0, 1.0, 0.5, 0.0]], dtype=np.float32)
    index = build_index(items, "Flat")
    held_out = pd.DataFrame({"user": [1], "item": [3]})
    seen = pd.DataFrame({"user": [1, 2], "item": [2, 3]})
    ev = EvalSet.build(held_out, seen, 4)
    assert ev.max_exclude == 1
    m = evaluate_index(index, u, ev, [1], 4)
    # item 2 scores highest but was seen: item 3 moves to rank 1
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0


def test_popularity_ranking_breaks_ties_by_id():
    counts = np.array([5, 9, 5, 0])  # items 1..4
    assert popularity_ranking(counts, 2, 3).tolist() == [[2, 1, 3], [2, 1, 3]]


def test_bad_factory_string_is_a_value_error():
    with pytest.raises(ConfigError, match="not a faiss factory string"):
        build_index(np.eye(4, dtype=np.float32), "NotAnIndex")


def test_top_k_columns_matches_torch_topk_and_pads_with_minus_one():
    import torch

    from twotower_cli.retrieval.search import top_k_columns

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(37, 500, generator=gen)
    scores[3, 2:] = float("-inf")  # row 3 has only 2 finite scores
    ids = top_k_columns(scores.numpy(), 10)
    want = torch.topk(scores, 10).indices.numpy()
    assert (ids[np.arange(37) != 3] == want[np.arange(37) != 3]).all()
    assert ids[3].tolist() == [int(scores[3, :2].argmax()), int(scores[3, :2].argmin())] + [-1] * 8
