"""`twotower preprocess` on the DuckDB engine (data/engine.py, data/sql.py) against the pandas
pipeline it replaced (tests/pandas_preprocess.py, the oracle): the same tables row for row and
the same counts, on MovieLens-100K, on dirty logs full of ties and on temporal splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas_preprocess as oracle
import pytest

from twotower_cli.core.errors import ConfigError, TwoTowerError
from twotower_cli.data import sql
from twotower_cli.data.engine import Engine, LogFile, check_memory
from twotower_cli.data.preprocess import SplitSettings, preprocess, write_preprocess
from twotower_cli.data.tables import RawData


def _same(raw: RawData, label: str, split: SplitSettings, tasks=()) -> dict:
    enc, parts, counts = preprocess(raw, label, split, tasks)
    enc0, parts0, counts0 = oracle.preprocess(raw, label, split, tasks)
    assert counts == counts0
    assert sorted(parts) == sorted(parts0)
    for name in parts0:
        pd.testing.assert_frame_equal(parts[name], parts0[name], check_dtype=True)
    pd.testing.assert_frame_equal(enc.users, enc0.users)
    pd.testing.assert_frame_equal(enc.items, enc0.items)
    assert enc.vocabs == enc0.vocabs and enc.schema == enc0.schema
    return counts


def _dirty_log(n: int, seed: int) -> RawData:
    """Few timestamps and items (many ties on (user, timestamp, item): file order decides),
    labels 0/1/2, a second task, exact duplicates, missing and unknown ids."""
    rng = np.random.default_rng(seed)
    log = pd.DataFrame({
        "user_id": rng.integers(0, 120, n), "item_id": rng.integers(0, 9, n),
        "timestamp": rng.integers(0, 4, n) * 3600 + 1_600_000_000,
        "label": rng.integers(0, 3, n).astype(np.int8),
        "task": rng.integers(0, 2, n).astype(np.int8),
        "weight": rng.random(n).astype(np.float32),
    })  # fmt: skip
    log = pd.concat([log, log.sample(n // 10, random_state=seed)], ignore_index=True)
    log["user_id"] = log["user_id"].astype(object)
    log.loc[rng.choice(len(log), 5, replace=False), "user_id"] = "NULL"
    log.loc[rng.choice(len(log), 5, replace=False), "item_id"] = 99  # not in the item table
    users = pd.DataFrame({"user_id": np.arange(120), "age": rng.integers(0, 5, 120)})
    items = pd.DataFrame({"item_id": np.arange(9), "kind": rng.integers(0, 3, 9)})
    return RawData(log, users, items, {"age": "categorical"}, {"kind": "categorical"})


@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_pandas_on_dirty_logs_full_of_ties(seed):
    raw = _dirty_log(3000, seed)
    for fractions in ((0.2, 0.2, 5), (0.5, 0.1, 2), (0.01, 0.3, 1)):
        split = SplitSettings(test_fraction=fractions[0], valid_fraction=fractions[1],
                              min_positives=fractions[2])  # fmt: skip
        counts = _same(raw, "label", split, ("label", "task"))
        assert counts["duplicates_dropped"] > 0 and counts["dropped_missing_id"] == 5
        assert counts["dropped_unknown_id"] > 0 and counts["exposures"] > 0


def test_engine_equals_pandas_on_temporal_splits():
    raw = _dirty_log(3000, 2)
    for days in ((1 / 24, 1 / 24), (1 / 12, 1 / 24)):
        split = SplitSettings(kind="temporal", valid_days=days[0], test_days=days[1])
        counts = _same(raw, "label", split, ("task",))
        assert counts["train"] and counts["valid"] and counts["test"]
        _same(raw, "label", split, ("label",))  # tasks_* hold the label's rows, re-ordered
    cut = SplitSettings(kind="temporal", valid_days=1 / 24, test_days=1 / 24)
    late = RawData(**{**raw.__dict__, "window_end": 1_600_000_000 + 3 * 3600})
    assert _same(late, "label", cut)["positives_outside_window"] > 0


def test_engine_equals_pandas_on_movielens():
    from twotower_cli.data import movielens

    try:
        raw = movielens.load("data/raw")
    except Exception as err:  # noqa: BLE001 - no copy and no network: nothing to compare
        pytest.skip(f"MovieLens-100K unavailable ({err})")
    counts = _same(raw, "like", SplitSettings(), ("watch", "like"))
    # the split the README gives
    assert (counts["train"], counts["valid"], counts["test"]) == (35418, 8882, 11075)


def test_a_parquet_log_is_scanned_to_the_same_tables(tmp_path):
    raw = _dirty_log(2000, 3)
    log = raw.interactions.assign(user_id=raw.interactions["user_id"].astype(str))
    raw = RawData(log, raw.users.astype({"user_id": str}), raw.items, {}, {})
    log.to_parquet(tmp_path / "log.parquet", index=False)
    on_disk = RawData(**{**raw.__dict__, "interactions": LogFile(tmp_path / "log.parquet")})
    _, parts, counts = preprocess(raw, "label", SplitSettings(), ("task",))
    out = tmp_path / "out"
    out.mkdir()
    with Engine("64MB", tmp_path / "tmp") as eng:
        _, counts_disk, names = write_preprocess(on_disk, "label", SplitSettings(), ("task",),
                                                 out, eng)  # fmt: skip
    assert counts_disk == counts
    assert sorted(names) == sorted(f"{n}.parquet" for n in parts)
    for name, frame in parts.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), frame)
    assert not (tmp_path / "tmp").exists()  # the engine's files are gone


def test_engine_errors_name_the_row_and_the_setting():
    raw = _dirty_log(200, 4)
    log = raw.interactions.copy()
    log.loc[17, "timestamp"] = 1_600_000_000_000  # milliseconds read as seconds
    with pytest.raises(TwoTowerError, match=r"column 'timestamp' row 17 holds .*milliseconds"):
        preprocess(RawData(**{**raw.__dict__, "interactions": log}), "label", SplitSettings())
    log.loc[17, "timestamp"] = np.nan
    with pytest.raises(TwoTowerError, match=r"column 'timestamp' row 17 has no time$"):
        preprocess(RawData(**{**raw.__dict__, "interactions": log}), "label", SplitSettings())
    with pytest.raises(TwoTowerError, match="no label column 'click'"):
        preprocess(raw, "click", SplitSettings())
    for bad in ("lots", "1 G", 5, "-1GB"):
        with pytest.raises(ConfigError, match="dataset.engine_memory: .* is not a memory size"):
            check_memory(bad)
    assert check_memory(" 512MB") == "512MB"


def test_narrow_integer_ids_join_as_numbers():
    raw = _dirty_log(1500, 5)
    log = raw.interactions[raw.interactions["user_id"] != "NULL"]
    log = log.astype({"user_id": np.int32, "item_id": np.int16})
    assert all(sql.is_number(t) for t in ("INTEGER", "SMALLINT", "UBIGINT", "DOUBLE"))
    assert not sql.is_number("VARCHAR")
    counts = _same(RawData(**{**raw.__dict__, "interactions": log}), "label", SplitSettings())
    assert counts["dropped_unknown_id"] > 0  # item 99 is still unknown
