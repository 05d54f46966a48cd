"""The data rules every loader shares (data/clean.py): missing ids, times (tz-aware text,
absurd numbers), infinite or absurd numbers, exact duplicate rows; and preprocess applying them
to any loader's output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas_preprocess import clean_log

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.clean import check_numbers, epoch_seconds, missing_ids
from twotower_cli.data.preprocess import SplitSettings, preprocess
from twotower_cli.data.tables import RawData


def test_spelled_missing_ids_are_missing_real_ids_are_not():
    ids = pd.Series(["u1", "NaN", "NULL", "None", "", " null ", None, np.nan, "nancy", "0"])
    assert missing_ids(ids).tolist() == [False, True, True, True, True, True, True, True,
                                         False, False]  # fmt: skip
    assert not missing_ids(pd.Series([0, 1, 2])).any()  # integer ids are never missing
    assert missing_ids(pd.Series([1.0, np.nan])).tolist() == [False, True]


def test_tz_aware_text_is_utc_and_naive_text_is_utc():
    text = pd.Series(["2021-06-24T08:00:00+08:00", "2021-06-24T00:00:00Z",
                      "2021-06-23T20:00:00-04:00"])  # fmt: skip
    # all three are 2021-06-24 00:00 UTC = 1624492800
    assert epoch_seconds(text, "log.csv", "when").tolist() == [1624492800] * 3
    naive = pd.Series(["2021-06-24 00:00:00", "2021-06-24 00:00:01"])
    assert epoch_seconds(naive, "log.csv", "when").tolist() == [1624492800, 1624492801]


def test_numbers_are_seconds_or_milliseconds_floored():
    assert epoch_seconds(pd.Series([1624492800123, 1624492800999]), "f", "t", 1000).tolist() == [
        1624492800, 1624492800]  # fmt: skip
    assert epoch_seconds(pd.Series(["1624492800", "7.9"]), "f", "t").tolist() == [1624492800, 7]


@pytest.mark.parametrize(
    "values, pieces",
    [
        (pd.Series([1.6e9, 1.6e21]), ["row 1", "1.6e+21", "milliseconds?"]),  # was INT64_MIN
        (pd.Series([1.6e9, np.inf]), ["row 1", "inf"]),
        (pd.Series([1_600_000_000, -(2**63)]), ["row 1", str(-(2**63))]),
        (pd.Series(["2021-06-24", "NULL"]), ["row 1", "has no time"]),
        (pd.Series(["2021-06-24", "3021-06-24"]), ["'when'"]),  # out of range
    ],
)
def test_absurd_times_are_one_line_errors_naming_file_row_column(values, pieces):
    with pytest.raises(TwoTowerError) as err:
        epoch_seconds(values, "log.csv", "when")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("log.csv: column 'when'"), msg
    for piece in pieces:
        assert piece in msg, (piece, msg)


def test_infinite_or_absurd_numbers_are_errors_missing_stays_missing():
    ok = check_numbers(pd.Series([1.0, np.nan, -3e14]), "items.csv", "price")
    assert np.isnan(ok.iloc[1])
    for bad, what in ((np.inf, "not finite"), (-np.inf, "not finite"), (2e15, "|x| > 1e+15")):
        with pytest.raises(
            TwoTowerError, match=rf"items.csv: column 'price' row 2 holds .*{what[:5]}"
        ):
            check_numbers(pd.Series([1.0, 2.0, bad]), "items.csv", "price")


def test_clean_log_drops_and_counts_duplicates_and_missing_ids():
    log = pd.DataFrame({"user_id": ["a", "a", "a", "NULL", "b", "b"],
                        "item_id": ["x", "x", "x", "x", "None", "y"],
                        "timestamp": [5, 5, 6, 5, 5, 5], "label": [1, 1, 1, 1, 1, 1]})  # fmt: skip
    kept, counts = clean_log(log, "log", "timestamp")
    # rows 1 copies row 0; rows 3 and 4 have a missing id; row 2 differs in time: kept
    assert counts == {"dropped_missing_id": 2, "duplicates_dropped": 1}
    assert kept[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["a", "x", 5], ["a", "x", 6], ["b", "y", 5]]  # fmt: skip


def _raw(inter: pd.DataFrame) -> RawData:
    users = pd.DataFrame({"user_id": pd.unique(inter["user_id"])})
    items = pd.DataFrame({"item_id": pd.unique(inter["item_id"])})
    return RawData(inter, users, items, {}, {}, counts={"log_rows": len(inter)})


def test_preprocess_applies_the_rules_to_any_loader():
    # 3 users x 6 items, one positive each; then one duplicate and one `None` user
    user = np.repeat([10, 11, 12], 6).astype(object)
    inter = pd.DataFrame({"user_id": user, "item_id": np.tile(np.arange(6), 3),
                          "timestamp": np.arange(18) * 60, "click": np.int8(1)})  # fmt: skip
    dirty = pd.concat([inter, inter.iloc[[4]], inter.iloc[[5]].assign(user_id="None")],
                      ignore_index=True)  # fmt: skip
    enc, parts, counts = preprocess(_raw(dirty), "click", SplitSettings(min_positives=2))
    assert counts["duplicates_dropped"] == 1 and counts["dropped_missing_id"] == 1
    assert counts["positives"] == 18 and enc.n_users == 3  # `None` is no user
    assert "None" not in enc.vocabs["user"]["user"]
    bad = inter.assign(timestamp=inter["timestamp"].to_numpy().copy())
    bad.loc[7, "timestamp"] = np.iinfo(np.int64).min  # what 1.6e21 used to become
    with pytest.raises(TwoTowerError, match="interactions: column 'timestamp' row 7"):
        preprocess(_raw(bad), "click", SplitSettings(min_positives=2))


def test_news_log_absurd_expo_time_and_spelled_missing_ids(tmp_path):
    from twotower_cli.data.news import LOG_COLS, read_log

    rows = [["1", "a1", "1624492800000", "2", "0", "1", "1", "70"],
            ["NULL", "a1", "1624492800000", "2", "0", "1", "1", "70"],
            ["2", "a2", "1624492860500", "2", "0", "1", "0", "0"]]  # fmt: skip
    path = tmp_path / "train_data_5w.csv"
    pd.DataFrame(rows, columns=LOG_COLS).to_csv(path, sep="\t")
    counts: dict = {}
    log = read_log(path, 60.0, counts)
    # the NULL user is missing (dropped, counted); ms floored to seconds
    assert counts["log_dropped_bad_expo_time"] == 1
    assert log["timestamp"].tolist() == [1624492800, 1624492860]
    assert log["long_read"].tolist() == [1, 0]
    rows[2][2] = "1.6e21"
    pd.DataFrame(rows, columns=LOG_COLS).to_csv(path, sep="\t")
    with pytest.raises(TwoTowerError, match=r"train_data_5w.csv: column 'expo_time' row 2 "):
        read_log(path, 60.0, {})
    rows[2][2], rows[2][7] = "1624492860500", "inf"
    pd.DataFrame(rows, columns=LOG_COLS).to_csv(path, sep="\t")
    with pytest.raises(TwoTowerError, match=r"column 'duration' row 2 holds inf"):
        read_log(path, 60.0, {})


def test_exact_duplicates_equal_pandas_duplicated():
    from pandas_preprocess import exact_duplicates

    rng = np.random.default_rng(0)
    n = 5000
    cols = {"user_id": 40, "item_id": 30, "timestamp": 5, "label": 2}
    frame = pd.DataFrame({c: rng.integers(0, k, n) for c, k in cols.items()})
    expected = frame.duplicated().to_numpy()
    assert 0 < expected.sum() < n  # same keys with another label are no duplicates
    assert (exact_duplicates(frame) == expected).all()
    text = frame.astype({"user_id": str})
    assert (exact_duplicates(text) == expected).all()
