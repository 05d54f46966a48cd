"""Defaults that follow the log (issue 29): the batch and patience for a log's size, and the
popularity score `train` compares its validation recall with."""

from __future__ import annotations

import pandas as pd
import pytest

from twotower_cli.core.settings import TrainSettings
from twotower_cli.retrieval.search import EvalSet
from twotower_cli.training.fitting import adapt_to_log, popularity_valid


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{"batch_size": 1024, "patience": 4, **kw})


def test_a_small_log_gets_a_smaller_batch_and_more_patience(capsys):
    # 4,141 rows: 1024 -> 4.0 steps, 512 -> 8.1, 256 -> 16.2 (< 32), 128 -> 32.4: batch 128;
    # ceil(4141 / 128) = 33 steps an epoch, ceil(140 / 33) = 5 epochs of patience
    s = adapt_to_log(_settings(), 4141)
    assert (s.batch_size, s.patience) == (128, 5)
    assert capsys.readouterr().out.strip() == (
        "train: 4141 training rows: batch 1024 -> 128, patience 4 -> 5 (33 steps an epoch; "
        "train.min_steps_per_epoch, train.patience_min_steps)"
    )
    # ML-100K's 35,418 rows: 34.6 steps at 1024 (>= 32), ceil(140 / 35) = 4: unchanged, silent
    s = adapt_to_log(_settings(), 35418)
    assert (s.batch_size, s.patience) == (1024, 4) and capsys.readouterr().out == ""
    # never below 32: 100 rows -> 32 (4 steps), patience ceil(140 / 4) = 35
    assert (
        adapt_to_log(_settings(), 100).batch_size,
        adapt_to_log(_settings(), 100).patience,
    ) == (
        32,
        35,
    )
    # 0 turns either rule off
    off = adapt_to_log(_settings(min_steps_per_epoch=0, patience_min_steps=0), 4141, say=False)
    assert (off.batch_size, off.patience) == (1024, 4)


def test_popularity_valid_ranks_the_most_popular_unseen_item():
    # training rows: item 1 x3, item 2 x2, item 3 x1. User 1 trained on item 1 and holds out
    # item 3: its list without item 1 starts with item 2, a miss; user 2 trained on item 2 and
    # holds out item 1, the first of its list: a hit. Recall@1 = (0 + 1) / 2
    train = pd.DataFrame({"user": [1, 2], "item": [1, 2]})
    valid = EvalSet.build(pd.DataFrame({"user": [1, 2], "item": [3, 1]}), train, 3)
    counts = pd.Series([0, 3, 2, 1]).to_numpy()
    assert popularity_valid(valid, counts, 1, 3) == pytest.approx(0.5)
    # at k = 2 user 1's list is items 2, 3: a hit too
    assert popularity_valid(valid, counts, 2, 3) == pytest.approx(1.0)
