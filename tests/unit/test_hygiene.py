"""Data hygiene of your own data (issue 25, issue 26 item 8): ISO 8601 times in every shape,
bad times named by row and quoted short (no stall on a huge field), ids stripped of spaces,
relative paths in a --config-dir YAML, unknown data set names, features held in the log."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import options, twotower

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data import csv_data
from twotower_cli.data.clean import epoch_seconds

MIDNIGHT = 1_624_492_800  # 2021-06-24T00:00:00Z = 18802 days * 86400 s


def test_iso_8601_in_every_shape_and_naive_text_is_utc():
    values = pd.Series([
        "2021-06-24T08:00:00+08:00",   # an offset: 08:00 at +08:00 is 00:00 UTC
        "2021-06-24 00:00:00",         # no offset: read as UTC
        "2021-06-24T00:00:00.750Z",    # fractional seconds in this row only (floored)
        "2021-06-24",                  # a date alone: midnight UTC
        "2021-06-23T19:30:00-04:30",   # 19:30 + 4:30 = 24:00 of the 23rd = midnight of the 24th
        "24 June 2021 01:00",          # no ISO shape: pandas' mixed parser reads it (+3600 s)
    ], dtype=object)  # fmt: skip
    seconds = epoch_seconds(values, "log.csv", "when")
    assert seconds.tolist() == [MIDNIGHT] * 5 + [MIDNIGHT + 3600]
    # thousands with an offset and one without: one column, no error
    many = pd.Series(["2021-06-24T08:00:00+08:00"] * 5000 + ["2021-06-24T00:00:00"])
    assert (epoch_seconds(many, "log.csv", "when") == MIDNIGHT).all()


@pytest.mark.parametrize(
    ("bad", "quoted"),
    [
        ("garbage", "'garbage'"),
        ("2021" * 750_000, "'" + "2021" * 10 + "'... (3,000,000 characters)"),  # 3 MB
        ("9" * 3_000_000, "'" + "9" * 40 + "'... (3,000,000 characters)"),
    ],
    ids=["word", "3MB text", "3MB digits"],
)
def test_bad_time_names_its_row_and_quotes_it_short_without_a_stall(bad, quoted):
    values = pd.Series(["2021-06-24T08:00:00+08:00"] * 2000, dtype=object)
    values[1234] = bad
    start = time.perf_counter()
    with pytest.raises(TwoTowerError) as err:
        epoch_seconds(values, "log.csv", "when")
    assert time.perf_counter() - start < 5  # issue 26: a 3 MB field stalled preprocess 200 s
    message = str(err.value)
    assert message.startswith(f"log.csv: column 'when' row 1234 holds {quoted}: not ")
    assert len(message) < 250 and "\n" not in message


def test_unknown_data_set_lists_the_known_ones_and_config_dir(capsys):
    assert twotower("preprocess", "dataset=nosuch") == 2
    err = capsys.readouterr().err.strip()
    known = ", ".join(options("dataset"))  # csv, ml100k, ml100k_csv, ...
    assert err == (
        f"twotower preprocess: error: dataset=nosuch: no such option; known: {known}; a YAML "
        "of your own goes in --config-dir DIR as DIR/dataset/nosuch.yaml"
    )


def test_features_held_in_the_log_take_each_ids_latest_row(tmp_path: Path):
    # a denormalised export: the user's region and the item's genre are log columns
    log = pd.DataFrame({
        "uid": ["a", "b", "a", "a", "b"],
        "iid": ["x", "y", "y", "x", "x"],
        "when": [30, 10, 20, 40, 50],
        "region": ["n", "s", "e", "w", "s"],     # a: n@30, e@20, w@40 -> w (latest time)
        "genre": ["g1", "g2", "g2", "g3", "g4"],  # x: g1@30, g3@40, g4@50 -> g4; y: g2
    })  # fmt: skip
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    raw = csv_data.load(
        str(path), user_col="uid", item_col="iid", time_col="when",
        user_features=[{"name": "region"}], item_features=[{"name": "genre"}],
    )  # fmt: skip
    users = dict(zip(raw.users["user_id"], raw.users["region"], strict=True))
    items = dict(zip(raw.items["item_id"], raw.items["genre"], strict=True))
    assert users == {"a": "w", "b": "s"} and items == {"x": "g4", "y": "g2"}
    assert raw.user_fields == {"region": "categorical"}
    with pytest.raises(TwoTowerError, match=r"log.csv: no column 'age'"):
        csv_data.load(str(path), user_col="uid", item_col="iid",
                      user_features=[{"name": "age"}])  # fmt: skip


def test_numbers_with_one_bad_text_name_the_text_row():
    values = pd.Series(["1624492800"] * 10 + ["2" * 3_000_000], dtype=object)
    with pytest.raises(TwoTowerError, match=r"row 10 holds '2222"):
        epoch_seconds(values, "log.csv", "when")
    assert np.array_equal(epoch_seconds(pd.Series(["1624492800", "2021-06-24"]), "f", "t"),
                          [MIDNIGHT, MIDNIGHT])  # fmt: skip
