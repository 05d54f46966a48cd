"""Data hygiene of your own data (issue 25, issue 26 item 8): ISO 8601 times in every shape,
bad times named by row and quoted short (no stall on a huge field), ids stripped of spaces,
relative paths in a --config-dir YAML, unknown data set names, features held in the log."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from conftest import read_json, twotower

from e2e.test_csv import overrides, write_log
from twotower_cli.data.clean import strip_ids


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
