"""The per-user split of `twotower preprocess` as plain SQL, run on DuckDB (the first piece of
issue 13's out-of-core preprocess; docs/scale.md says how it runs on Spark SQL).

`per_user_split_sql` returns one query that labels every positive `train`, `valid` or `test`
exactly as `split.per_user_split` does: per user, rows ordered by (timestamp, item, then file
order); users with >= min_positives rows send the last round(fraction * n) (at least 1) to
test, and the same rule on what is left carves validation. Only window functions, CASE and
FLOOR: the same text runs on DuckDB, Spark SQL, Postgres or BigQuery.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

PARTS = ("train", "valid", "test")


def _held_out(n: str, fraction: float, min_positives: int) -> str:
    """How many of a user's n rows are held out (split.hold_out_last's n_out)."""
    return (
        f"CASE WHEN {n} >= {int(min_positives)} "
        f"THEN GREATEST(1, FLOOR({float(fraction)!r} * {n} + 0.5)) ELSE 0 END"
    )


def per_user_split_sql(
    source: str, columns: list[str], test_fraction: float, valid_fraction: float,
    min_positives: int,
) -> str:  # fmt: skip
    """A query over `source` (a table with `columns`, among them user, item, timestamp, and a
    `_row` column holding the file order) giving `columns` and `part`, in (user, timestamp,
    item, _row) order."""
    cols = ", ".join(f'"{c}"' for c in columns)
    order = 'PARTITION BY "user" ORDER BY "timestamp", "item", "_row"'
    return f"""
WITH ranked AS (
    SELECT {cols}, "_row",
           ROW_NUMBER() OVER ({order}) - 1 AS rank_all,
           COUNT(*) OVER (PARTITION BY "user") AS n_all
    FROM {source}
),
rest AS (
    SELECT {cols}, "_row",
           ROW_NUMBER() OVER ({order}) - 1 AS rank_rest,
           COUNT(*) OVER (PARTITION BY "user") AS n_rest
    FROM ranked
    WHERE rank_all < n_all - {_held_out("n_all", test_fraction, min_positives)}
)
SELECT {cols}, 'test' AS part, "_row" FROM ranked
WHERE rank_all >= n_all - {_held_out("n_all", test_fraction, min_positives)}
UNION ALL
SELECT {cols},
       CASE WHEN rank_rest >= n_rest - {_held_out("n_rest", valid_fraction, min_positives)}
            THEN 'valid' ELSE 'train' END AS part, "_row"
FROM rest
ORDER BY "user", "timestamp", "item", "_row"
"""


def connect(memory_limit: str = "1GB", temp_dir: str | Path | None = None, threads: int = 0):
    """A DuckDB connection bounded to `memory_limit` (it spills to `temp_dir` beyond it)."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{Path(temp_dir)}'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def per_user_split_duckdb(
    positives: pd.DataFrame, test_fraction: float, valid_fraction: float, min_positives: int,
    con=None,
) -> dict[str, pd.DataFrame]:  # fmt: skip
    """split.per_user_split computed by the SQL above on DuckDB: the same three tables."""
    con = con or connect()
    frame = positives.assign(_row=range(len(positives)))
    con.register("positives", frame)
    try:
        query = per_user_split_sql("positives", list(positives.columns), test_fraction,
                                   valid_fraction, min_positives)  # fmt: skip
        out = con.execute(query).df()
    finally:
        con.unregister("positives")
    part = out.pop("part").to_numpy()
    out = out.drop(columns="_row")
    return {
        name: out[part == name].reset_index(drop=True).astype(positives.dtypes.to_dict())
        for name in PARTS
    }
