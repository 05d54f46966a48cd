"""Fresh-item evaluation, by hand: the pool window measured from click ages, the freshness
prior, the trending baseline, honest recall with a pool (every test click in the denominator),
candidate coverage, cold recall and the id dropout that teaches content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twotower_cli.data.freshness import (
    HOUR,
    age_quantiles,
    click_age_log_density,
    log_virality,
    period_log_prior,
    pool_window,
)
from twotower_cli.retrieval.pools import (
    cold_items,
    item_counts,
    score_rankings,
    trending_ranking,
    unknown_cold_ids,
    with_item_prior,
)
from twotower_cli.retrieval.search import EvalSet
from twotower_cli.training.trainer import drop_ids

DAY = 24 * HOUR


def test_pool_window_covers_the_target_share_of_clicks():
    # periods of one day ending at 10 days; clicks 2 h before a period's end: ages 1, 3, 5, 20 h
    # -> a test click like them needs a window of age + 2 h: 3, 5, 7, 22 h
    end = 10 * DAY
    times = np.array([end - 2 * HOUR, end - DAY - 2 * HOUR, end - 3 * DAY - 2 * HOUR,
                      end - 2 * HOUR])  # fmt: skip
    ages = np.array([1, 3, 5, 20]) * HOUR
    # 50%: the quantile of [3, 5, 7, 22] h at 0.5 = 6 h; 100%: 22 h
    assert pool_window(ages, times, end, DAY, 0.5) == 6 * HOUR
    assert pool_window(ages, times, end, DAY, 1.0) == 22 * HOUR
    # rounded up to the hour: 0.75 -> 7 + 0.25 * (22 - 7) = 10.75 h -> 11 h
    assert pool_window(ages, times, end, DAY, 0.75) == 11 * HOUR
    q = age_quantiles(ages)
    assert q["click_age_hours_p50"] == 4.0 and q["click_age_hours_p99"] == pytest.approx(19.55)


def test_freshness_prior_averages_the_click_age_density_over_the_period():
    # ages 0 h (x3), 1 h (x1), none at 2 h; add-one: counts [4, 2, 1] / 7
    density = click_age_log_density(np.array([0, 10, 20, 3700]), 3)
    assert np.exp(density) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    # period of 2 hours [0, 2h): an item created at 0 -> ages 0, 1 h -> (4 + 2) / 2 / 7;
    # created at 1 h -> absent, then age 0 -> 4 / 2 / 7; created 10 h before -> last bin 1 / 7
    prior = period_log_prior(np.array([0, HOUR, -10 * HOUR]), 0, 2 * HOUR, density)
    assert np.exp(prior) == pytest.approx([3 / 7, 2 / 7, 1 / 7])


def test_virality_compares_clicks_with_what_age_predicts():
    # hour-0 density 0.75 for items 1 and 2 (both created at 0), item 3 not yet created: the
    # period's 4 clicks are expected 2 / 2 / 0; clicked 3 / 1 / 0 ->
    # log((3 + 1) / (2 + 1)), log((1 + 1) / (2 + 1)), log((0 + 1) / (0 + 1))
    density = np.log([0.75, 0.25])
    viral = log_virality(np.array([0, 0, 5 * HOUR]), np.array([1, 1, 1, 2]), 0, HOUR, density)
    assert viral == pytest.approx(np.log([4 / 3, 2 / 3, 1.0]))


def test_item_prior_column_adds_to_the_logit():
    u = np.array([[0.6, 0.8]], np.float32)
    v = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # logit_scale 20: logits 12 and 16; prior log 0.5 and log 0.01 -> 11.31 and 11.39 (/20)
    u2, v2 = with_item_prior(u, v, np.log([0.5, 0.01]), 1.0, 20.0)
    assert u2.shape == (1, 3) and v2.shape == (2, 3)
    assert (u2 @ v2.T * 20).ravel() == pytest.approx([12 + np.log(0.5), 16 + np.log(0.01)],
                                                     rel=1e-5)  # fmt: skip


def test_trending_counts_the_last_hours_and_breaks_ties_by_recency():
    at = 100 * HOUR
    seen = pd.DataFrame(
        {
            "user": [1, 2, 3, 1, 2, 3, 1],
            "item": [1, 1, 2, 3, 3, 4, 5],
            # item 1: twice within 24 h; item 3: twice, the latest later than item 1's;
            # item 2: once; item 4: only before the 24 h (rank by recency); item 5: at `at`
            "timestamp": np.array([90, 91, 80, 85, 95, 50, 100]) * HOUR,
        }
    )
    ranked = trending_ranking(seen, at, 24, n_items=5, n_users=2, depth=5)
    # counts: 3 -> 2 (latest 95 h), 1 -> 2 (91 h), 2 -> 1, 4 -> 0 (50 h), 5 -> not before `at`
    assert ranked.tolist() == [[3, 1, 2, 4, 5]] * 2
    assert trending_ranking(seen, at, 24, 5, 1, 3, ids=np.array([1, 2, 4])).tolist() == [[1, 2, 4]]


def test_pool_keeps_every_test_click_in_the_denominator():
    # 2 users, 6 items; user 0 clicked items 1 and 5, user 1 clicked 2; the pool is {1, 2, 3}
    # so item 5 cannot be ranked: user 0's recall@2 <= 1/2
    held = pd.DataFrame({"user": [10, 10, 20], "item": [1, 5, 2]})
    ev = EvalSet.build(held, pd.DataFrame({"user": [10], "item": [4]}), 6)
    top = np.array([[1, 3], [3, 2]])
    cold = cold_items(np.array([1, 3, 4, 6]), 6)  # items 2 and 5 never trained
    assert cold.tolist() == [2, 5]
    out = score_rankings({"m": top}, ev, [2], 6, np.array([1, 2, 3]), cold)["m"]
    # recall@2: user 0 1/2, user 1 1/1 -> 0.75; 2 of the 3 clicks are in the pool
    assert out["recall@2"] == pytest.approx(0.75)
    assert out["candidate_coverage"] == pytest.approx(2 / 3)
    # cold clicks: user 0's item 5 (missed), user 1's item 2 (hit) -> (0 + 1) / 2
    assert out["cold_recall@2"] == pytest.approx(0.5) and out["cold_click_share"] == 2 / 3
    # without a pool there is no coverage figure
    assert "candidate_coverage" not in score_rankings({"m": top}, ev, [2], 6, None, cold)["m"]


def test_id_dropout_and_cold_ids():
    gen = torch.Generator().manual_seed(0)
    feats = {"item": torch.arange(1, 10001), "cate": torch.ones(10000, dtype=torch.long)}
    out = drop_ids(feats, 0.3, gen)
    assert (out["cate"] == 1).all()
    assert (out["item"] == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    kept = out["item"] > 0
    assert (out["item"][kept] == feats["item"][kept]).all()
    items = {"item": torch.arange(0, 5), "cate": torch.tensor([0, 7, 7, 8, 8])}
    # training positives on items 1, 3, 3 (read in two batches): items 2 and 4 are cold
    counts = item_counts([pd.DataFrame({"item": [1, 3]}), pd.DataFrame({"item": [3]})], 4)
    assert counts.tolist() == [0, 1, 0, 2, 0]
    cold = unknown_cold_ids(items, counts)
    assert cold["item"].tolist() == [0, 1, 0, 3, 0] and cold["cate"].tolist() == [0, 7, 7, 8, 8]
