"""The per-user split as plain SQL on DuckDB (data/sql.py) against the pandas implementation
(split.per_user_split, the oracle): the same rows in the same order, on MovieLens-100K and on a
log full of ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_cli.data.split import per_user_split
from twotower_cli.data.sql import per_user_split_duckdb


def _same(a: dict, b: dict) -> None:
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(a[name], b[name], check_dtype=True)


def test_sql_split_equals_pandas_on_a_log_full_of_ties():
    rng = np.random.default_rng(0)
    n = 4000
    # few timestamps and items: many rows tie on (user, timestamp, item), file order decides
    cols = {"user": 200, "item": 8, "timestamp": 3, "label": 9}
    log = pd.DataFrame({c: rng.integers(1 if c != "timestamp" else 0, k, n)
                        for c, k in cols.items()})  # fmt: skip
    for fractions in ((0.2, 0.2, 5), (0.5, 0.1, 2), (0.01, 0.3, 1)):
        _same(per_user_split_duckdb(log, *fractions), per_user_split(log, *fractions))


def test_sql_split_equals_pandas_on_movielens():
    from twotower_cli.data import movielens
    from twotower_cli.data.preprocess import encode, encode_log

    try:
        raw = movielens.load("data/raw")
    except Exception as err:  # noqa: BLE001 - no copy and no network: nothing to compare
        pytest.skip(f"MovieLens-100K unavailable ({err})")
    log, _ = encode_log(raw, encode(raw), "like", ("watch",))
    positives = log[log["like"] > 0].reset_index(drop=True)
    sql = per_user_split_duckdb(positives, 0.2, 0.2, 5)
    _same(sql, per_user_split(positives, 0.2, 0.2, 5))
    # the split the README gives
    assert (len(sql["train"]), len(sql["valid"]), len(sql["test"])) == (35418, 8882, 11075)
