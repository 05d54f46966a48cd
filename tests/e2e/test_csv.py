"""`dataset=csv`: a user's own data by config alone, MovieLens-100K expressed that way, and a
one-line error (file + column), exit code 2 and no stage directory for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import read_json, twotower

DAY = 86_400


def write_log(tmp: Path, n_users: int = 30, n_items: int = 12, per_user: int = 8) -> dict:
    """A small log (ratings 1..5, times one hour apart) with user and item tables."""
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    log = pd.DataFrame(
        {
            "uid": [f"u{u}" for u in user],
            "iid": item,
            "stars": rng.integers(1, 6, len(user)),
            "when": 1_600_000_000 + np.arange(len(user)) * 3600,
        }
    )
    users = pd.DataFrame({"uid": [f"u{u}" for u in range(n_users)],
                          "region": rng.choice(["n", "s"], n_users),
                          "age": rng.integers(18, 70, n_users)})  # fmt: skip
    items = pd.DataFrame({"iid": np.arange(n_items),
                          "tags": ["a|b", "b", "", "c|a"] * (n_items // 4)})  # fmt: skip
    paths = {"log": tmp / "log.csv", "users": tmp / "users.tsv", "items": tmp / "items.parquet"}
    log.to_csv(paths["log"], index=False)
    users.to_csv(paths["users"], sep="\t", index=False)
    items.to_parquet(paths["items"], index=False)
    return paths


def overrides(paths: dict, out_dir: Path, *extra: str) -> list[str]:
    return [
        "dataset=csv",
        f"dataset.load.interactions={paths['log']}",
        "dataset.load.user_col=uid",
        "dataset.load.item_col=iid",
        "dataset.load.time_col=when",
        "dataset.load.label_col=stars",
        "dataset.load.min_label=3",
        f"dataset.load.users={paths['users']}",
        "dataset.load.user_key=uid",
        "dataset.load.user_features=[{name: region, type: categorical},"
        " {name: age, type: numeric}]",
        f"dataset.load.items={paths['items']}",
        "dataset.load.item_key=iid",
        "dataset.load.item_features=[{name: tags, type: multihot, sep: '|'}]",
        "dataset.split.min_positives=2",
        f"paths.out={out_dir}",
        *extra,
    ]


def test_csv_log_with_tables_preprocesses_by_config_alone(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    assert twotower("preprocess", *overrides(paths, out_dir)) == 0
    prep = out_dir / "csv" / "preprocess"
    figures = read_json(prep / "manifest.json")["figures"]
    log = pd.read_csv(paths["log"])
    assert figures["positives"] == int((log["stars"] >= 3).sum())
    assert figures["exposures"] > 0  # rows below min_label: shown, not chosen
    schema = read_json(prep / "schema.json")
    assert [(f["name"], f["kind"]) for f in schema["item"]] == [
        ("item", "categorical"), ("tags", "multihot")]  # fmt: skip
    items = pd.read_parquet(prep / "items.parquet")
    vocab = read_json(prep / "vocabs.json")["item"]["tags"]
    # tags "a|b","b","","c|a" x3: counts b 6, a 6, c 3 -> a, b (tie: by value), c
    assert vocab == ["a", "b", "c"]
    assert np.stack(items["tags"]).tolist()[:4] == [[1, 2], [2, 0], [0, 0], [3, 1]]
    users = pd.read_parquet(prep / "users.parquet")
    assert abs(users["age"].mean()) < 1e-6  # numeric: standardised


def test_temporal_split_on_date_time_text(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"])
    log["when"] = pd.to_datetime(log["when"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    log.to_csv(paths["log"], index=False)
    args = overrides(paths, out_dir, "dataset.split.kind=temporal", "dataset.split.test_days=2",
                     "dataset.split.valid_days=1")  # fmt: skip
    assert twotower("preprocess", *args) == 0
    prep = out_dir / "csv" / "preprocess"
    parts = {n: pd.read_parquet(prep / f"{n}.parquet") for n in ("train", "valid", "test")}
    # 240 rows an hour apart: the last 48 hours test, the 24 before validate
    end = 1_600_000_000 + 239 * 3600 + 1
    assert parts["test"]["timestamp"].min() >= end - 2 * DAY
    assert parts["valid"]["timestamp"].min() >= end - 3 * DAY
    assert parts["valid"]["timestamp"].max() < end - 2 * DAY
    assert parts["train"]["timestamp"].max() < end - 3 * DAY
    log_pos = (log["stars"] >= 3).to_numpy()
    times = 1_600_000_000 + np.arange(240) * 3600
    assert len(parts["test"]) == int((log_pos & (times >= end - 2 * DAY)).sum())


def test_user_yaml_in_its_own_config_dir(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "shop.yaml").write_text(
        "defaults: [csv, _self_]\n"
        f"load:\n  interactions: {paths['log']}\n  user_col: uid\n  item_col: iid\n"
        "split:\n  min_positives: 2\n"
    )
    args = ["--config-dir", str(tmp_path / "myconf"), "dataset=shop", f"paths.out={out_dir}"]
    assert twotower("preprocess", *args) == 0
    figures = read_json(out_dir / "shop" / "preprocess" / "manifest.json")["figures"]
    assert figures["positives"] == 240  # no label_col: every row is a positive
    assert figures["n_users"] == 30 and figures["n_items"] == 12


def test_unknown_ids_are_counted_and_dropped(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"])
    log.loc[[0, 1, 2], "uid"] = "stranger"
    log.loc[[5], "iid"] = 99
    log.to_csv(paths["log"], index=False)
    assert twotower("preprocess", *overrides(paths, out_dir)) == 0
    figures = read_json(out_dir / "csv" / "preprocess" / "manifest.json")["figures"]
    assert figures["dropped_user_not_in_users"] == 3
    assert figures["dropped_item_not_in_items"] == 1
    assert figures["log_kept"] == 240 - 4


def test_tz_aware_times_parse_to_utc(tmp_path: Path, out_dir: Path):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"])
    when = pd.to_datetime(log["when"], unit="s", utc=True)
    # the same instants written at +08:00 and at -05:30, alternately
    east = when.dt.tz_convert("Asia/Shanghai").map(lambda t: t.isoformat())
    west = when.dt.tz_convert("Asia/Kolkata").map(lambda t: t.isoformat())
    log["when"] = np.where(np.arange(len(log)) % 2 == 0, east, west)
    assert log["when"][0].endswith("+08:00") and log["when"][1].endswith("+05:30")
    log.to_csv(paths["log"], index=False)
    assert twotower("preprocess", *overrides(paths, out_dir)) == 0
    prep = out_dir / "csv" / "preprocess"
    times = pd.concat([pd.read_parquet(prep / f"{n}.parquet") for n in ("train", "valid", "test")])
    expected = 1_600_000_000 + np.arange(240) * 3600
    assert set(times["timestamp"]) <= set(expected)
    assert times["timestamp"].min() >= expected[0] and len(times) > 100


def test_exact_duplicate_rows_and_spelled_missing_ids_are_dropped_and_counted(
    tmp_path: Path, out_dir: Path
):
    paths = write_log(tmp_path)
    log = pd.read_csv(paths["log"], dtype={"uid": str, "iid": str})
    log.loc[[0, 1, 2, 3], "uid"] = ["NaN", "NULL", "None", ""]
    log.loc[[6], "iid"] = "null"
    log = pd.concat([log, log.iloc[[10, 11, 12, 10]]], ignore_index=True)  # 10 twice more
    log.to_csv(paths["log"], index=False)
    assert twotower("preprocess", *overrides(paths, out_dir)) == 0
    prep = out_dir / "csv" / "preprocess"
    figures = read_json(prep / "manifest.json")["figures"]
    assert figures["dropped_missing_id"] == 5
    assert figures["duplicates_dropped"] == 4
    assert figures["log_kept"] == 240 - 5
    assert figures["n_users"] == 30  # no user called NULL or None
    assert not {"NaN", "NULL", "None", ""} & set(read_json(prep / "vocabs.json")["user"]["user"])


def _corrupt(paths: dict, what: str) -> list[str]:
    """Break the input one way; return the extra overrides it needs."""
    log = pd.read_csv(paths["log"])
    if what == "missing file":
        paths["log"].unlink()
    elif what == "missing column":
        log.drop(columns="stars").to_csv(paths["log"], index=False)
    elif what == "wrong type":
        log["stars"] = log["stars"].astype(object)
        log.loc[7, "stars"] = "five"
        log.to_csv(paths["log"], index=False)
    elif what == "wrong feature type":
        users = pd.read_csv(paths["users"], sep="\t")
        users["age"] = users["age"].astype(object)
        users.loc[3, "age"] = "old"
        users.to_csv(paths["users"], sep="\t", index=False)
    elif what == "infinite feature":
        users = pd.read_csv(paths["users"], sep="\t")
        users["age"] = users["age"].astype(float)
        users.loc[3, "age"] = np.inf
        users.to_csv(paths["users"], sep="\t", index=False)
    elif what == "infinite label":
        log["stars"] = log["stars"].astype(float)
        log.loc[5, "stars"] = -np.inf
        log.to_csv(paths["log"], index=False)
    elif what == "absurd time":
        log["when"] = log["when"].astype(float)
        log.loc[9, "when"] = 1.6e21  # once silently INT64_MIN
        log.to_csv(paths["log"], index=False)
    elif what == "milliseconds as seconds":
        log.loc[2, "when"] = log.loc[2, "when"] * 1000
        log.to_csv(paths["log"], index=False)
    elif what == "empty log":
        log.iloc[:0].to_csv(paths["log"], index=False)
    elif what == "unknown ids, strict":
        log.loc[[4], "uid"] = "stranger"
        log.to_csv(paths["log"], index=False)
        return ["dataset.load.strict=true"]
    elif what == "no test users":
        return ["dataset.split.min_positives=100"]
    elif what == "temporal without time":
        return ["dataset.split.kind=temporal", "dataset.load.time_col=null"]
    return []


BAD = {
    # case: (pieces every error line must contain)
    "missing file": ["log.csv", "file not found"],
    "missing column": ["log.csv", "no column 'stars'"],
    "wrong type": ["log.csv", "column 'stars' must be numeric", "row 7", "'five'"],
    "wrong feature type": ["users.tsv", "column 'age' must be numeric", "'old'"],
    "infinite feature": ["users.tsv", "column 'age'", "row 3", "inf", "not finite"],
    "infinite label": ["log.csv", "column 'stars'", "row 5", "-inf"],
    "absurd time": ["log.csv", "column 'when'", "row 9", "1.6e+21", "between 1900 and 2100"],
    "milliseconds as seconds": ["log.csv", "column 'when'", "row 2", "milliseconds?"],
    "empty log": ["log.csv", "empty"],
    "unknown ids, strict": ["log.csv", "column 'uid'", "users.tsv", "'stranger'"],
    "no test users": ["log.csv", "no test users", "column 'uid'", ">= 100", "column 'stars'"],
    "temporal without time": ["log.csv", "temporal needs a time_col"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, tmp_path: Path, out_dir: Path, capsys
):
    paths = write_log(tmp_path)
    extra = _corrupt(paths, case)
    assert twotower("preprocess", *overrides(paths, out_dir, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for piece in BAD[case]:
        assert piece in err[0], (piece, err[0])
    assert not (out_dir / "csv").exists()


def test_movielens_as_plain_csv_gives_the_same_tables(tmp_path: Path, out_dir: Path):
    # as on a fresh clone: the csv files are not there; the loader writes them from ML-100K
    src = tmp_path / "ml"
    assert twotower("preprocess", f"paths.out={out_dir}") == 0
    names = {"interactions": "ratings.csv", "users": "users.csv", "items": "items.csv"}
    files = [f"dataset.load.{key}={src / name}" for key, name in names.items()]
    assert twotower("preprocess", "dataset=ml100k_csv", *files, f"paths.out={out_dir}") == 0
    assert sorted(p.name for p in src.iterdir()) == ["items.csv", "ratings.csv", "users.csv"]
    assert len(pd.read_csv(src / "ratings.csv")) == 100_000
    a, b = out_dir / "ml100k" / "preprocess", out_dir / "ml100k_csv" / "preprocess"
    for name in ("users", "items"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"),
                                      pd.read_parquet(b / f"{name}.parquet"))  # fmt: skip
    for name in ("train", "valid", "test", "exposures"):
        x, y = pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet")
        cols = ["user", "item", "timestamp", "rating"]
        pd.testing.assert_frame_equal(x[cols], y[cols], check_dtype=False)  # rating: f32 / f64
        assert (x["like"].to_numpy() == y["label"].to_numpy()).all()
    # the csv loader reads ids and categories as text: the same vocabularies, spelled as text
    va, vb = read_json(a / "vocabs.json"), read_json(b / "vocabs.json")
    for side in ("user", "item"):
        for name, vocab in va[side].items():
            assert [str(v) for v in vocab] == [str(v) for v in vb[side][name]], name
    assert read_json(a / "schema.json") == read_json(b / "schema.json")


@pytest.mark.slow  # two whole runs (~7 s): the e2e lane
def test_a_raw_file_replaced_in_place_makes_run_redo_everything(tmp_path: Path, capsys):
    import os

    from twotower_cli.data import csv_data

    paths = write_log(tmp_path)
    args = overrides(paths, tmp_path / "out", "train.epochs=1", "threads=1")
    prep = tmp_path / "out" / "csv" / "preprocess"

    def run() -> str:
        capsys.readouterr()
        assert twotower("run", *args) == 0
        return capsys.readouterr().out

    run()
    sources = read_json(prep / "manifest.json")["sources"]
    assert [Path(s["path"]).name for s in sources] == ["log.csv", "users.tsv", "items.parquet"]
    assert all(len(s["sha256"]) == 64 for s in sources)
    rows = read_json(prep / "manifest.json")["figures"]["log_rows"]
    # touched, same bytes: hashed again, still current
    os.utime(paths["log"])
    assert run().count(": up to date") == 6
    # the daily export overwritten in place: one row fewer
    lines = paths["log"].read_text().splitlines(keepends=True)
    paths["log"].write_text("".join(lines[:-1]))
    said = run()
    assert f"preprocess: {paths['log']} changed since it was read: redoing it" in said
    assert ": up to date" not in said
    assert read_json(prep / "manifest.json")["figures"]["log_rows"] == rows - 1
    # same size and mtime, other bytes (a copy that kept the time): the change time tells
    stat = paths["log"].stat()
    text = paths["log"].read_text()
    paths["log"].write_text(text.replace("u1,", "u2,", 1))
    os.utime(paths["log"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert paths["log"].stat().st_size == stat.st_size
    said = run()
    assert "changed since it was read" in said and ": up to date" not in said
    # written while preprocess reads it: nothing published
    real = csv_data.read_any

    def read_then_append(path, *a, **k):
        frame = real(path, *a, **k)
        if Path(path) == paths["log"]:
            with open(path, "a") as f:
                f.write("u0,1,5,1600000001\n")
        return frame

    csv_data.read_any = read_then_append
    try:
        assert twotower("preprocess", *args) == 2
    finally:
        csv_data.read_any = real
    err = capsys.readouterr().err
    assert f"{paths['log']}: changed while `twotower preprocess` read it" in err
