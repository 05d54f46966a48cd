"""Data hygiene of your own data (issue 25, issue 26 item 8): ISO 8601 times in every shape,
bad times named by row and quoted short (no stall on a huge field), ids stripped of spaces,
relative paths in a --config-dir YAML, unknown data set names, features held in the log."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import options, read_json, twotower
from test_csv import overrides, write_log

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data import csv_data
from twotower_cli.data.clean import epoch_seconds, strip_ids

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


def test_huge_time_field_through_preprocess_is_one_line(tmp_path: Path, out_dir: Path, capsys):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"])
    log["when"] = pd.to_datetime(log["when"], unit="s", utc=True).map(lambda t: t.isoformat())
    log.loc[17, "when"] = "2021" * 750_000
    log.to_csv(paths["log"], index=False)
    start = time.perf_counter()
    assert twotower("preprocess", *overrides(paths, out_dir)) == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'when' row 17 holds '20212021" in err[0]
    assert "(3,000,000 characters)" in err[0] and len(err[0]) < 300


def test_ids_lose_surrounding_spaces_and_are_counted(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"], dtype={"uid": str, "iid": str})
    log.loc[[0, 5, 9], "uid"] = [" u0", "u0 ", " u1 "]  # rows 0 and 5 are u0's, 9 is u1's
    log.loc[[3], "iid"] = f" {log.loc[3, 'iid']}\t"
    log.to_csv(paths["log"], index=False)
    users = pd.read_csv(paths["users"], sep="\t", dtype={"uid": str})
    users.loc[2, "uid"] = "  u2"
    users.to_csv(paths["users"], sep="\t", index=False)
    assert twotower("preprocess", *overrides(paths, out_dir, "dataset.load.strict=true")) == 0
    prep = out_dir / "csv" / "preprocess"
    figures = read_json(prep / "manifest.json")["figures"]
    assert figures["ids_stripped"] == 4 and figures["users_ids_stripped"] == 1
    assert figures["n_users"] == 30 and figures["log_kept"] == 240  # no second u0, u1, u2
    vocab = read_json(prep / "vocabs.json")["user"]["user"]
    assert "u0" in vocab and not any(v != v.strip() for v in vocab)
    # numbers and clean text are left alone
    assert strip_ids(pd.Series([1, 2]))[1] == 0


def test_relative_paths_in_a_config_dir_yaml_follow_the_yaml(tmp_path, out_dir, monkeypatch):
    conf = tmp_path / "myconf" / "dataset"
    (conf / "files").mkdir(parents=True)
    write_log(conf / "files")
    (conf / "shop.yaml").write_text(
        "defaults: [csv, _self_]\n"
        "load:\n  interactions: files/log.csv\n  user_col: uid\n  item_col: iid\n"
        "  users: files/users.tsv\n  user_key: uid\n"
        "  user_features: [{name: region, type: categorical}]\n"
        "split:\n  min_positives: 2\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the config dir nor its parent
    args = ["--config-dir", str(tmp_path / "myconf"), "dataset=shop", f"paths.out={out_dir}"]
    assert twotower("preprocess", *args) == 0
    assert read_json(out_dir / "shop" / "preprocess" / "manifest.json")["figures"]["n_users"] == 30
    # a value given on the command line stays relative to the working directory
    (elsewhere / "mine").mkdir()
    log = pd.read_csv(conf / "files" / "log.csv")
    log[log["uid"] != "u0"].to_csv(elsewhere / "mine" / "log.csv", index=False)
    assert twotower("preprocess", *args, "dataset.load.interactions=mine/log.csv") == 0
    assert (
        read_json(out_dir / "shop" / "preprocess" / "manifest.json")["figures"]["log_rows"] == 232
    )


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
