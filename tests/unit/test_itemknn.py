"""Cosine item-KNN worked by hand, its neighbourhood choice, and EASE on the most popular items
of a catalogue above eval.ease_max_items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_cli.retrieval.baselines import BaselineSettings, baseline_metrics, most_popular
from twotower_cli.retrieval.itemknn import cosine_neighbours, knn_select, knn_top_unseen
from twotower_cli.retrieval.search import EvalSet


def _pairs(rows: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item"])


# users 1..3 over items 1..4: user 1 has items 1, 2; user 2 has 1, 2, 3; user 3 has 3, 4
SEEN = _pairs([(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 3), (3, 4), (3, 4)])


def test_cosine_similarities_by_hand():
    # columns' users: item 1 {1,2}, item 2 {1,2}, item 3 {2,3}, item 4 {3} (the repeat counts
    # once); cos(1,2) = 2 / sqrt(2*2) = 1, cos(1,3) = cos(2,3) = 1 / sqrt(2*2) = 0.5,
    # cos(3,4) = 1 / sqrt(2*1) = 0.7071, cos(1,4) = cos(2,4) = 0; diagonal 0
    S = cosine_neighbours(SEEN, 4).prune(10).toarray()
    r = 1 / np.sqrt(2)
    expected = [[0, 1, 0.5, 0], [1, 0, 0.5, 0], [0.5, 0.5, 0, r], [0, 0, r, 0]]
    np.testing.assert_allclose(S, expected, atol=1e-6)
    # k = 1 keeps each row's best neighbour only: 1 -> 2, 2 -> 1, 3 -> 4 (0.71 > 0.5), 4 -> 3
    S1 = cosine_neighbours(SEEN, 4).prune(1).toarray()
    np.testing.assert_allclose(S1, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, r], [0, 0, r, 0]],
                               atol=1e-6)  # fmt: skip


def test_knn_ranks_unseen_items_by_summed_similarity():
    # user 1 (items 1, 2): x S = [1, 1, 0.5 + 0.5, 0 + 0] -> items 1, 2 masked, item 3 (1.0),
    # then item 4 (0.0); user 3 (items 3, 4): x S = [0.5, 0.5, 0.71, 0.71] -> items 1 and 2,
    # tied at 0.5 (in either order)
    ev = EvalSet.build(_pairs([(1, 3), (3, 1)]), SEEN, 4)
    S = cosine_neighbours(SEEN, 4).prune(10)
    top = knn_top_unseen(S, SEEN, ev, 2, 4)
    assert top[0].tolist() == [3, 4] and sorted(top[1]) == [1, 2]
    # with k = 1 item 2's only neighbour is item 1 and item 1's item 2: user 1's items give
    # x S = [1, 1, 0, 0], so item 3 no longer stands out (0, tied with item 4)
    top1 = knn_top_unseen(cosine_neighbours(SEEN, 4).prune(1), SEEN, ev, 2, 4)
    assert sorted(top1[0]) == [3, 4]
    # candidates restrict the ranking: only items 2 and 4 may be shown
    assert knn_top_unseen(S, SEEN, ev, 2, 4, ids=np.array([2, 4])).tolist() == [[4, -1], [2, -1]]


def test_neighbourhood_is_picked_on_validation():
    # items 1..3 are a block every user of the first 40 reads two of, item 4 is read with item 1
    # by the other 20 (and item 5 by every one of them). Validation holds the block's third
    # item for the first 40 users. With k = 1, item 1's only neighbour is item 4 (cos 0.82 >
    # 0.5), so users who read 1 and 2 get item 3 only through item 2; a larger k sees both.
    train, valid = [], []
    for u in range(1, 41):
        a, b, c = np.roll([1, 2, 3], u)
        train += [(u, int(a)), (u, int(b))]
        valid.append((u, int(c)))
    for u in range(41, 61):
        train += [(u, 1), (u, 4), (u, 5)]
    size, scores = knn_select(_pairs(train), _pairs(valid), 5, [1, 5], 1)
    assert scores[5] == pytest.approx(1.0)
    assert scores[1] < scores[5]
    assert size == 5


def test_most_popular_breaks_ties_by_id():
    # counts: item 1: 2, item 2: 2, item 3: 2, item 4: 2 (repeats count), so the first two ids
    assert most_popular(SEEN, 4, 2).tolist() == [1, 2]
    assert most_popular(_pairs([(1, 4), (2, 4), (1, 3)]), 4, 2).tolist() == [3, 4]


def test_ease_above_max_items_is_fitted_on_the_most_popular(capsys):
    # items 1, 2, 3 have 2, 2, 2 train + valid rows, item 4 one: with ease_max_items = 3,
    # EASE learns items 1..3 only and never ranks item 4; its metrics say so
    train = _pairs([(1, 1), (1, 2), (2, 2), (2, 3), (3, 4)])
    valid = _pairs([(1, 3), (3, 1)])
    seen = pd.concat([train, valid])
    ev = EvalSet.build(_pairs([(1, 4), (2, 1), (3, 2)]), seen, 4)
    settings = BaselineSettings(names=["ease"], ease_max_items=3, ease_lambdas=[1.0], select_k=2)
    out, skipped = baseline_metrics(settings, train, valid, ev, [2], 4, None)
    assert not skipped
    assert out["ease"]["items"] == 3 and out["ease"]["of"] == 4
    # user 1 has seen items 1..3, the 3 EASE knows: nothing to recommend, item 4 is missed;
    # users 2 and 3 have one unseen known item left each (1 and 2): hits. Recall@2 = 2/3
    assert out["ease"]["recall@2"] == pytest.approx(2 / 3)
    line = capsys.readouterr().out.strip()
    assert line.startswith("evaluate: EASE on the 3 most popular of 4 items")


def test_knn_follows_the_protocol_mask_on_validation():
    # train: users 1, 2 read items 1, 2; user 3 reads 2, 3: cos(1,2) = 2 / sqrt(2*3) = 0.82,
    # cos(2,3) = 1 / sqrt(3*1) = 0.58, cos(1,3) = 0. User 1 reads item 2 again in validation.
    # Masked (the default), user 1's top 2 is item 3 (0.58) and nothing: recall 0; with
    # mask_seen False items 1 and 2 (0.82 each) come first: recall 1
    train = _pairs([(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (3, 3)])
    valid = _pairs([(1, 2)])
    assert knn_select(train, valid, 3, [10], 2)[1] == {10: 0.0}
    assert knn_select(train, valid, 3, [10], 2, mask_seen=False)[1] == {10: 1.0}
