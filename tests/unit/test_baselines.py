"""EASE's closed form worked by hand, its lambda choice, and its place in `twotower evaluate`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twotower_cli.retrieval.baselines import (
    BaselineSettings,
    baseline_metrics,
    ease_peak_bytes,
    ease_select,
    ease_top_unseen,
    ease_weights,
    gram,
)
from twotower_cli.retrieval.search import EvalSet


def _pairs(rows: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item"])


def test_ease_closed_form_by_hand():
    # X = [[1,1,0],[0,1,1]] (users 1, 2; items 1..3), lambda = 1:
    # G + I = [[2,1,0],[1,3,1],[0,1,2]], det = 2*5 - 1*2 = 8,
    # P = (G + I)^-1 = 1/8 [[5,-2,1],[-2,4,-2],[1,-2,5]];
    # B_ij = -P_ij / P_jj: column 1 (P_11 = 5/8): B_21 = 2/5, B_31 = -1/5;
    # column 2 (P_22 = 4/8): B_12 = B_32 = 1/2; column 3 (P_33 = 5/8): B_13 = -1/5, B_23 = 2/5
    G = gram(_pairs([(1, 1), (1, 2), (2, 2), (2, 3), (2, 3)]), 3)  # the repeat counts once
    assert G.tolist() == [[1, 1, 0], [1, 2, 1], [0, 1, 1]]
    B = ease_weights(G, 1.0)
    expected = [[0.0, 0.5, -0.2], [0.4, 0.0, 0.4], [-0.2, 0.5, 0.0]]
    assert torch.allclose(B, torch.tensor(expected, dtype=B.dtype), atol=1e-12)


def test_ease_ranks_unseen_items_by_x_times_b():
    # user 1 has items 1, 2: scores x B = [0.4, 0.5, 0.2]; items 1 and 2 are masked (seen),
    # so the ranking is item 3, then nothing (-1); user 2 (items 2, 3): x B = [0.2, 0.5, 0.4],
    # item 1 is all that is left
    seen = _pairs([(1, 1), (1, 2), (2, 2), (2, 3)])
    ev = EvalSet.build(_pairs([(1, 3), (2, 1)]), seen, 3)
    B = ease_weights(gram(seen, 3), 1.0)
    assert ease_top_unseen(B, seen, ev, 2, 3).tolist() == [[3, -1], [1, -1]]
    # candidates restrict the ranking: only item 1 may be shown
    assert ease_top_unseen(B, seen, ev, 2, 3, ids=np.array([1])).tolist() == [[-1, -1], [1, -1]]


def test_lambda_is_picked_on_validation():
    # 30 users read 2 of items 1-4, 70 read 2 of items 5-8; item 9 is read by every first user
    # and half the others; validation holds a third item of each user's block. The two
    # lambdas score differently on validation and the better one is chosen.
    rng = np.random.default_rng(0)
    train, valid = [], []
    for u in range(1, 101):
        pick = rng.choice(np.arange(1, 5) if u <= 30 else np.arange(5, 9), 3, replace=False)
        train += [(u, int(i)) for i in pick[:2]]
        train += [(u, 9)] if u <= 30 or rng.random() < 0.5 else []
        valid.append((u, int(pick[2])))
    lam, scores = ease_select(_pairs(train), _pairs(valid), 9, [0.1, 1e4], 1)
    assert scores == pytest.approx({0.1: 0.23, 1e4: 0.29})
    assert lam == 1e4


def test_ease_peak_memory_is_three_items_by_items_matrices():
    # float64 up to 4,096 items: 3 * 4096^2 * 8 B = 402,653,184 B (384 MiB);
    # float32 above: at the default eval.ease_max_items, 3 * 20000^2 * 4 B = 4.8e9 B (4.5 GiB)
    assert ease_peak_bytes(4096) == 402_653_184
    assert ease_peak_bytes(20_000) == 4_800_000_000
    assert BaselineSettings().ease_max_items == 20_000


def test_baselines_fit_on_train_only_when_refit_is_off():
    # train: item 1 twice, item 2 once; valid: item 2 three times. Counting train + valid,
    # item 2 (4) beats item 1 (2); train alone, item 1 (2) beats item 2 (1). User 9 has seen
    # nothing and holds out item 1, so popularity's hit@1 is 0 with the refit and 1 without.
    train = pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 2]})
    valid = pd.DataFrame({"user": [4, 5, 6], "item": [2, 2, 2]})
    ev = EvalSet.build(pd.DataFrame({"user": [9], "item": [1]}), train, 3)
    for refit, hit in ((True, 0.0), (False, 1.0)):
        s = BaselineSettings(["popularity"], refit=refit)
        out, _ = baseline_metrics(s, train, valid, ev, [1], 3, None)
        assert out["popularity"]["hit_rate@1"] == hit
