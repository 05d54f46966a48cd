"""Data rules every loader shares (run by `twotower preprocess`): missing ids, times, numbers,
exact duplicate log rows.

- Ids are stripped of surrounding spaces (` u_00010 ` is `u_00010`); the rows changed are
  counted (`ids_stripped`, and `<side>s_ids_stripped` for the user and item tables).
- An id that is null or spells missing (`NaN`, `NULL`, `None`, empty; any case, spaces around)
  is missing, never an id: its row is dropped and counted (`dropped_missing_id`).
- Times are epoch seconds from numbers or date-time text: ISO 8601 in every shape (mixed in
  one column), then pandas' `mixed` parser for other text; text with a UTC offset
  (`2021-06-24T08:00:00+08:00`) is converted to UTC, text without one is read as UTC. Text no
  parser reads is a one-line error naming its row and quoting it (cut to 40 characters). A time
  that is not finite or outside 1900..2100 is a one-line error naming the file, row and column
  (1.6e21 used to wrap to INT64_MIN; a millisecond epoch read as seconds lands in year 52000).
- A numeric value that is infinite or larger in magnitude than 1e15 is a one-line error naming
  the file, row and column (missing values stay missing).
- Exact duplicate log rows (every column equal) are dropped and counted (`duplicates_dropped`):
  a log that lists one event twice would count it twice and could put one copy in train and
  the other in test.

Rows in error messages are 0-based data rows of the file, as pandas numbers them. The log's
missing ids and exact duplicates are dropped in SQL (data/sql.py); the pandas version of that is
the test oracle (tests/pandas_preprocess.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError

MISSING_TOKENS = frozenset({"", "nan", "null", "none"})
# what read_csv should treat as missing in an id column (keep_default_na=False elsewhere)
MISSING_SPELLINGS = ["", "NaN", "nan", "NAN", "NULL", "null", "Null", "None", "none", "NONE"]
TIME_MIN = -2_208_988_800  # 1900-01-01 UTC
TIME_MAX = 4_102_444_800  # 2100-01-01 UTC
NUMBER_MAX = 1e15
# longer text is no date-time (the longest ISO 8601 shapes hold ~35 characters)
MAX_TIME_CHARS = 64


def missing_ids(values: pd.Series) -> np.ndarray:
    """True where an id is missing: null, or text that spells missing."""
    values = pd.Series(values)
    missing = values.isna().to_numpy()
    if values.dtype.kind in "iubf":
        return missing
    # check the distinct values only: far fewer than rows in a log
    uniq = pd.Series(values.dropna().unique(), dtype=object)
    spelled = uniq[uniq.astype(str).str.strip().str.lower().isin(MISSING_TOKENS)]
    if len(spelled):
        missing = missing | values.isin(spelled.tolist()).to_numpy()
    return missing


def strip_ids(values: pd.Series) -> tuple[pd.Series, int]:
    """Text ids without surrounding spaces (` u_00010 ` is `u_00010`, not a second user);
    (ids, rows changed). Only the distinct values are looked at."""
    values = pd.Series(values)
    if pd.api.types.is_numeric_dtype(values):
        return values, 0
    uniq = pd.Series(values.dropna().unique(), dtype=object)
    text = uniq.astype(str)
    spaced = (text != text.str.strip()).to_numpy()  # numbers' text never has spaces
    if not spaced.any():
        return values, 0
    mapping = dict(zip(uniq[spaced], text[spaced].str.strip(), strict=True))
    changed = values.isin(mapping.keys()).to_numpy()
    out = values.astype(object).copy()
    out[changed] = values[changed].map(mapping).to_numpy()
    return out, int(changed.sum())


def _where(values: pd.Series, bad: np.ndarray) -> tuple[object, object]:
    """(row label, value as a plain Python scalar) of the first bad row."""
    pos = int(np.argmax(bad))
    return values.index[pos], _plain(values.iloc[pos])


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def check_numbers(values: pd.Series, path, col: str) -> pd.Series:
    """values (numeric) unchanged, or a one-line error at the first infinite or absurd one."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = np.isinf(x) | (np.abs(x) > NUMBER_MAX)
    if bad.any():
        row, value = _where(values, bad)
        what = "not finite" if np.isinf(x[int(np.argmax(bad))]) else f"|x| > {NUMBER_MAX:g}"
        raise TwoTowerError(f"{path}: column {col!r} row {row} holds {value!r} ({what})")
    return values


def check_times(seconds: np.ndarray, index: pd.Index, path, col: str, raw=None) -> None:
    """A one-line error at the first time that is not finite or outside 1900..2100."""
    x = np.asarray(seconds)
    with np.errstate(invalid="ignore"):
        bad = (x < TIME_MIN) | (x > TIME_MAX)
        if x.dtype.kind == "f":
            bad |= ~np.isfinite(x)
    if bad.any():
        pos = int(np.argmax(bad))
        value = _plain(x[pos] if raw is None else raw.iloc[pos])
        raise time_error(path, col, index[pos], value, x[pos] > TIME_MAX)


def time_error(path, col: str, row, value, too_late: bool) -> TwoTowerError:
    """The one line for a time outside 1900..2100 (also raised by data/preprocess.py)."""
    quoted = _clip(value) if isinstance(value, str) else repr(value)
    return TwoTowerError(
        f"{path}: column {col!r} row {row} holds {quoted}: not a time between 1900 "
        f"and 2100 in epoch seconds{' (milliseconds?)' if too_late else ''}"
    )


def epoch_seconds(values: pd.Series, path, col: str, per_second: int = 1) -> np.ndarray:
    """Epoch seconds (int64) from numbers (epoch in units of 1/per_second s, floored) or from
    date-time text (offsets converted to UTC, naive text read as UTC); one-line errors."""
    values = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetime_seconds(values, path, col)
    if values.dtype.kind in "iu":
        seconds = values.to_numpy(np.int64) // per_second
        check_times(seconds, values.index, path, col, values)
        return seconds
    number = pd.to_numeric(values, errors="coerce")
    is_number = number.notna().to_numpy()
    if values.dtype.kind == "f" and not is_number.all():  # numbers with gaps
        row = _where(values, ~is_number)[0]
        raise TwoTowerError(f"{path}: column {col!r} row {row} has no time")
    if not is_number.any():
        return _text_seconds(values, path, col)
    # epoch numbers, and any text beside them read as date-times, each row as what it is
    seconds = np.floor(number[is_number].to_numpy(np.float64) / per_second)
    check_times(seconds, values.index[is_number], path, col, values[is_number])
    if is_number.all():
        return seconds.astype(np.int64)
    out = np.empty(len(values), np.int64)
    out[is_number] = seconds
    out[~is_number] = _text_seconds(values[~is_number], path, col)
    return out


def _text_seconds(values: pd.Series, path, col: str) -> np.ndarray:
    """Date-time text: ISO 8601 in any of its shapes (offset or none, fractional seconds in some
    rows only, date alone), then whatever pandas' `mixed` parser reads, for the rows ISO 8601
    did not; no offset = UTC. The first row neither reads is a one-line error quoting it."""
    missing = missing_ids(values)
    if missing.any():
        raise TwoTowerError(f"{path}: column {col!r} row {_where(values, missing)[0]} has no time")
    text = values.astype(str)
    # no date-time is longer; a huge field would stall the fallback parser (dateutil)
    too_long = (text.str.len() > MAX_TIME_CHARS).to_numpy()
    stamps = pd.to_datetime(text.where(~too_long, ""), utc=True, format="ISO8601",
                            errors="coerce")  # fmt: skip
    retry = (stamps.isna().to_numpy()) & ~too_long
    if retry.any():
        stamps[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        row, value = _where(text, bad)
        raise TwoTowerError(
            f"{path}: column {col!r} row {row} holds {_clip(value)}: not epoch seconds or a "
            "date-time (ISO 8601, e.g. 2021-06-24T08:00:00+08:00)"
        )
    return _datetime_seconds(stamps, path, col)


def _clip(value: str, n: int = 40) -> str:
    """A value quoted for a message, cut to n characters (a field may hold megabytes)."""
    return repr(value) if len(value) <= n else f"{value[:n]!r}... ({len(value):,} characters)"


def _datetime_seconds(stamps: pd.Series, path, col: str) -> np.ndarray:
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    if stamps.isna().any():
        row = _where(stamps, stamps.isna().to_numpy())[0]
        raise TwoTowerError(f"{path}: column {col!r} row {row} has no time")
    seconds = stamps.astype("datetime64[s]").to_numpy().astype(np.int64)
    check_times(seconds, stamps.index, path, col, stamps)
    return seconds


def drop_missing_keys(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """A user or item table without the rows whose id is missing (they are no entity)."""
    missing = missing_ids(table[key])
    return table[~missing].reset_index(drop=True) if missing.any() else table
