"""The queries of `twotower preprocess`, as plain SQL text (run on DuckDB by data/engine.py).

Only SELECT, joins, GROUP BY, window functions, CASE and NOT EXISTS: the same text runs on
Spark SQL, Postgres or BigQuery once the tables are there (docs/scale.md). Each builder takes
table and column names and returns a query; data/preprocess.py runs them in order:

    src -> clean (missing ids and exact duplicates out) -> log (dense ids, known ids only)
        -> split (positives labelled train / valid / test) -> tables written as parquet

`_row` is a row's position in the source file: the tie-breaker that makes every order as
stable as pandas' stable sorts were.
"""

from __future__ import annotations

PARTS = ("train", "valid", "test")
BIG = 9_223_372_036_854_775_807  # stands for "no such time" in least()/comparisons
MISSING_TOKENS = ("", "nan", "null", "none")  # data/clean.py's MISSING_TOKENS
WHITESPACE = " \t\n\r\x0b\x0c"


def q(name: str) -> str:
    """A quoted identifier (`user` is a keyword in several dialects)."""
    return '"' + name.replace('"', '""') + '"'


def cols(names) -> str:
    return ", ".join(q(c) for c in names)


def literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def is_float(sql_type: str) -> bool:
    return sql_type.upper() in ("FLOAT", "DOUBLE", "REAL") or sql_type.upper().startswith(
        "DECIMAL"
    )


INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT"}  # fmt: skip


def is_number(sql_type: str) -> bool:
    return is_float(sql_type) or sql_type.upper() in INTEGERS


def missing(col: str, sql_type: str) -> str:
    """True where an id is missing: null, NaN, or text spelling missing (data/clean.py)."""
    if is_float(sql_type):
        return f"({q(col)} IS NULL OR isnan({q(col)}))"
    if is_number(sql_type):
        return f"{q(col)} IS NULL"
    tokens = ", ".join(literal(t) for t in MISSING_TOKENS)
    text = f"lower(trim(CAST({q(col)} AS VARCHAR), {literal(WHITESPACE)}))"
    return f"({q(col)} IS NULL OR {text} IN ({tokens}))"


def positive(col: str, sql_type: str) -> str:
    """label > 0, false for null and NaN (pandas' `log[label] > 0`)."""
    nan = f" AND NOT isnan({q(col)})" if is_float(sql_type) else ""
    return f"coalesce({q(col)} > 0{nan}, false)"


def bad_time(col: str, sql_type: str, lo: int, hi: int) -> str:
    """True where a time is null, not finite or outside [lo, hi] epoch seconds."""
    nan = f" OR NOT isfinite({q(col)})" if is_float(sql_type) else ""
    return f"({q(col)} IS NULL{nan} OR {q(col)} < {lo} OR {q(col)} > {hi})"


def first_bad_time(source: str, col: str, sql_type: str, lo: int, hi: int) -> str:
    return (
        f"SELECT _row, {q(col)} FROM {source} "
        f"WHERE {bad_time(col, sql_type, lo, hi)} ORDER BY _row LIMIT 1"
    )


def with_ids(source: str, names: list[str], missing_ids: str) -> str:
    """(rows with both ids, distinct hashes of those rows). Equal counts prove that no two
    rows are equal (equal rows hash alike), so `clean`'s GROUP BY can be skipped; a hash
    collision only sends a log down the exact path."""
    return (
        f"SELECT count(*), count(DISTINCT hash({cols(names)})) FROM {source} "
        f"WHERE NOT {missing_ids}"
    )


def clean(source: str, names: list[str], missing_ids: str) -> str:
    """`source` without rows with a missing id, and with one row (the first) of every set of
    exact duplicates."""
    return (
        f"SELECT {cols(names)}, min(_row) AS _row FROM {source} "
        f"WHERE NOT {missing_ids} GROUP BY {cols(names)}"
    )


def join_key(left: str, right: str, same_kind: bool) -> str:
    """An id join; ids of different kinds (text against numbers) compare as text."""
    if same_kind:
        return f"{left} = {right}"
    return f"CAST({left} AS VARCHAR) = CAST({right} AS VARCHAR)"


def encoded_log(
    source: str, others: list[str], time_expr: str, user_join: str, item_join: str
) -> str:
    """Every row of `source` with dense ids (known ids only): user, item, timestamp, the other
    columns, _row. The maps `umap(user_id, user)` and `imap(item_id, item)` hold the ids."""
    rest = "".join(f", c.{q(c)}" for c in others)
    return (
        f'SELECT u."user", i."item", {time_expr} AS "timestamp"{rest}, c._row '
        f"FROM {source} c JOIN umap u ON {user_join} JOIN imap i ON {item_join}"
    )


def _held_out(n: str, fraction: float, min_positives: int) -> str:
    """How many of a user's n rows are held out (hold_out_last's n_out in the test oracle,
    tests/pandas_preprocess.py)."""
    return (
        f"CASE WHEN {n} >= {int(min_positives)} "
        f"THEN GREATEST(1, FLOOR({float(fraction)!r} * {n} + 0.5)) ELSE 0 END"
    )


def per_user_split(
    source: str, names: list[str], test_fraction: float, valid_fraction: float,
    min_positives: int,
) -> str:  # fmt: skip
    """`names` and `part` for every row of `source` (user, item, timestamp, _row among its
    columns): per user, rows ordered by (timestamp, item, _row); users with >= min_positives
    rows send the last round(fraction * n) (at least 1) to test, and the same rule on the
    rest carves validation. One window: the rest is a prefix of the same order. Rows come in
    (user, timestamp, item, _row) order, the order the parts are written in."""
    order = 'PARTITION BY "user" ORDER BY "timestamp", "item", _row'
    n_test = _held_out("n", test_fraction, min_positives)
    n_valid = _held_out(f"(n - {n_test})", valid_fraction, min_positives)
    return f"""
SELECT {cols(names)}, _row,
       CASE WHEN rank >= n - {n_test} THEN 'test'
            WHEN rank >= n - {n_test} - {n_valid} THEN 'valid'
            ELSE 'train' END AS part
FROM (SELECT {cols(names)}, _row,
             ROW_NUMBER() OVER ({order}) - 1 AS rank,
             COUNT(*) OVER (PARTITION BY "user") AS n
      FROM {source})
ORDER BY "user", "timestamp", "item", _row
"""


def protocol_split(source: str, names: list[str], order: str, shuffled: bool) -> str:
    """`names` and `part` for every row of `source` (as `s`) under a protocol
    (data/protocol.py): per user, rows ranked by `order` (`o.pos` of table `porder(_row, pos)`
    when `shuffled`); table `pcounts(n, n_train, n_valid)` says how many of a user's n rows
    train and validate, the rest test. Rows come in (user, timestamp, item, _row) order."""
    join = "JOIN porder o ON o._row = s._row" if shuffled else ""
    picked = ", ".join(f"s.{q(c)}" for c in names)
    return f"""
SELECT {cols(names)}, _row,
       CASE WHEN rank < c.n_train THEN 'train'
            WHEN rank < c.n_train + c.n_valid THEN 'valid' ELSE 'test' END AS part
FROM (SELECT {picked}, s._row,
             ROW_NUMBER() OVER (PARTITION BY s."user" ORDER BY {order}) - 1 AS rank,
             COUNT(*) OVER (PARTITION BY s."user") AS n
      FROM {source} s {join}) r
JOIN pcounts c ON c.n = r.n
ORDER BY "user", "timestamp", "item", _row
"""


def temporal_split(source: str, names: list[str], valid_start: int, test_start: int,
                   end: int) -> str:  # fmt: skip
    """`names` and `part` by time: train before valid_start, validation up to test_start,
    test up to end (exclusive); rows at or after end get no part (NULL). File order."""
    ts = '"timestamp"'
    return (
        f"SELECT {cols(names)}, _row, CASE WHEN {ts} < {valid_start} THEN 'train' "
        f"WHEN {ts} < {test_start} THEN 'valid' WHEN {ts} < {end} THEN 'test' END AS part "
        f"FROM {source} ORDER BY _row"
    )


def firsts(split: str) -> str:
    """Per user, the first validation and the first test timestamp (NULL: none)."""
    return (
        f'SELECT "user", min("timestamp") FILTER (WHERE part = \'valid\') AS fv, '
        f'min("timestamp") FILTER (WHERE part = \'test\') AS ft FROM {split} GROUP BY "user"'
    )


def part_rows(split: str, names: list[str], part: str) -> str:
    """One part of the split, in the order the split table holds its rows (DuckDB keeps a
    table's order in a scan without ORDER BY; on an engine that does not, append the split
    query's ORDER BY)."""
    return f"SELECT {cols(names)} FROM {split} WHERE part = {literal(part)}"


def task_rows(log: str, split: str, names: list[str], part: str, not_label: str,
              any_task: str) -> str:  # fmt: skip
    """`tasks_<part>`: the label's positives of that part plus every other row positive for a
    task, placed per user on the label split's timeline: from the user's first test
    positive on -> test, from the first validation (or test) positive on -> validation, else
    train. Order: (user, timestamp, item), the label's rows before other rows on ties."""
    v_from = f"least(coalesce(f.fv, {BIG}), coalesce(f.ft, {BIG}))"
    t_from = f"coalesce(f.ft, {BIG})"
    ts = 'l."timestamp"'
    where = (
        f"CASE WHEN {ts} >= {t_from} THEN 'test' WHEN {ts} >= {v_from} THEN 'valid' "
        f"ELSE 'train' END"
    )
    picked = ", ".join(f"l.{q(c)}" for c in names)
    return f"""
SELECT {cols(names)} FROM (
    SELECT {cols(names)}, _row, 0 AS src FROM {split} WHERE part = {literal(part)}
    UNION ALL
    SELECT {picked}, l._row, 1 AS src FROM {log} l LEFT JOIN firsts f ON l."user" = f."user"
    WHERE {not_label} AND {any_task} AND {where} = {literal(part)}
)
ORDER BY "user", "timestamp", "item", src, _row
"""


def exposures(log: str, split: str, names: list[str], is_positive: str,
              before: int | None) -> str:  # fmt: skip
    """Rows whose label is not positive, usable as training negatives: before the user's first
    held-out positive (no peeking at the evaluation period) and never a positive of that
    user; `before` (temporal split) keeps only rows before validation starts. File order."""
    picked = ", ".join(f"l.{q(c)}" for c in names)
    early = "" if before is None else f' AND l."timestamp" < {int(before)}'
    return f"""
SELECT {picked} FROM {log} l LEFT JOIN firsts f ON l."user" = f."user"
WHERE NOT {is_positive}{early}
  AND (f.fv IS NULL AND f.ft IS NULL OR l."timestamp" < least(f.fv, f.ft))
  AND NOT EXISTS (SELECT 1 FROM {split} p
                  WHERE p."user" = l."user" AND p."item" = l."item" AND p.part IS NOT NULL)
ORDER BY l._row
"""
