"""`twotower report`: the bucket maths by hand, the page on the small runs (self-contained, every
plot present, numbers equal to evaluate's), side by side, and in headless Chromium."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.report.diagnostics import (
    BucketSettings,
    coverage_curve,
    pairwise_auc,
    popularity_buckets,
    recall_by_item_bucket,
    user_buckets,
)
from twotower_cli.retrieval.search import EvalSet

# ---- the maths, by hand -------------------------------------------------------------------


def test_popularity_buckets_cut_by_share_of_interactions():
    # counts 5, 3, 1, 1, 0 (10 in all); interactions before each item in popularity order:
    # 0, 5, 8, 9, 10 -> shares 0, .5, .8, .9, 1.0. head: share before < .5 -> item 1;
    # torso: < .8 -> item 2; tail: items 3, 4 and the unseen item 5
    assert popularity_buckets(np.array([5, 3, 1, 1, 0]), 0.5, 0.8).tolist() == [0, 1, 2, 2, 2]
    # ties go by id, so the order does not depend on how the counts came in
    assert popularity_buckets(np.array([1, 5, 1, 3, 0]), 0.5, 0.8).tolist() == [2, 0, 2, 1, 2]


def test_item_bucket_recall_counts_held_out_pairs():
    # 3 items: item 1 head, 2 torso, 3 tail. user 10 holds out items 1 and 3, user 20 item 2.
    held = pd.DataFrame({"user": [10, 10, 20], "item": [1, 3, 2]})
    ev = EvalSet.build(held, pd.DataFrame({"user": [], "item": []}, dtype=int), 3)
    top = np.array([[1, 2], [3, -1]])  # user 10 finds item 1; user 20 misses item 2
    out = recall_by_item_bucket(top, ev, np.array([0, 1, 2]), 3)
    assert out["pairs"] == [1, 1, 1]
    assert out["recall"] == [1.0, 0.0, 0.0]
    # slots: items 1, 2, 3 -> one each of 3 filled slots
    assert out["share_of_recommendations"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_user_buckets_and_coverage_and_auc():
    # training positives 1..9; tercile cuts at 3.67 and 6.33 -> int 3 and 6: 1-3, 4-6, 7-9
    bucket, labels = user_buckets(np.arange(1, 10), (1 / 3, 2 / 3))
    assert bucket.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert labels == ["1-3", "4-6", "7-9"]
    # items first met at rank 0: {1, 2}, rank 1: {3}, never: 4 of 4 items -> .5, .75
    assert coverage_curve(np.array([[1, 3], [2, 1]]), 4) == [0.5, 0.75]
    # positives 2, 4 against random 1, 2, 3: 2 beats 1 and ties 2 -> 1.5 / 3; 4 beats all
    # -> 3 / 3; mean (0.5 + 1) / 2
    assert pairwise_auc(np.array([2.0, 4.0]), np.array([1.0, 2.0, 3.0])) == 0.75


def test_bad_bucket_settings_name_the_key():
    with pytest.raises(TwoTowerError, match="report.head_share, report.torso_share"):
        BucketSettings(head_share=0.9, torso_share=0.8).check()
    with pytest.raises(TwoTowerError, match="report.user_quantiles"):
        BucketSettings(user_quantiles=(0.6, 0.3)).check()
