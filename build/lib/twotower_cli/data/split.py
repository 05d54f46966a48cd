"""Train/validation/test splits of positive interactions (run by `twotower preprocess`)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def hold_out_last(
    frame: pd.DataFrame, fraction: float, min_positives: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last `fraction` of rows (rounded, at least 1) -> held out.

    Rows are ordered by (timestamp, item) within each user; users with fewer than
    `min_positives` rows keep them all. Returns (kept, held_out).
    """
    order = user_time_order(frame)
    user = frame["user"].to_numpy()[order]
    # rows are grouped by user now: a row's rank within its user and its user's row count
    starts = np.flatnonzero(np.concatenate([[True], user[1:] != user[:-1]])) if len(user) else user
    sizes = np.diff(np.append(starts, len(user)))
    n = np.repeat(sizes, sizes)
    rank = np.arange(len(user)) - np.repeat(starts, sizes)
    n_out = np.where(n >= min_positives, np.maximum(1, np.floor(fraction * n + 0.5)), 0)
    out = rank >= n - n_out
    frame = frame.take(order)
    return frame[~out].reset_index(drop=True), frame[out].reset_index(drop=True)


def user_time_order(frame: pd.DataFrame) -> np.ndarray:
    """The stable sort order by (user, timestamp, item), vectorised: one int64 key when the
    three fit in 63 bits (one argsort instead of pandas' multi-key sort, ~10x faster on 10M
    rows), else np.lexsort."""
    cols = [frame[c].to_numpy().astype(np.int64) for c in ("user", "timestamp", "item")]
    cols = [c - c.min(initial=0) for c in cols]
    bits = [int(c.max(initial=0)).bit_length() for c in cols]
    if sum(bits) > 63:
        return np.lexsort(cols[::-1])
    key = (cols[0] << (bits[1] + bits[2])) | (cols[1] << bits[2]) | cols[2]
    return np.argsort(key, kind="stable")


def per_user_split(
    positives: pd.DataFrame, test_fraction: float, valid_fraction: float, min_positives: int
) -> dict[str, pd.DataFrame]:
    """Test carved from each user's latest positives, then validation from what remains."""
    rest, test = hold_out_last(positives, test_fraction, min_positives)
    train, valid = hold_out_last(rest, valid_fraction, min_positives)
    return {"train": train, "valid": valid, "test": test}


DAY = 86_400


def temporal_bounds(
    timestamps: pd.Series, valid_days: float, test_days: float, end: int | None = None
) -> tuple[int, int, int]:
    """(valid_start, test_start, end) in epoch seconds: test is the last `test_days` before
    `end` (default: the last timestamp + 1), validation the `valid_days` before that."""
    end = int(timestamps.max()) + 1 if end is None else int(end)
    test_start = end - int(round(test_days * DAY))
    return test_start - int(round(valid_days * DAY)), test_start, end


def temporal_split(
    positives: pd.DataFrame, valid_start: int, test_start: int, end: int
) -> dict[str, pd.DataFrame]:
    """Positives by time: train before valid_start, validation up to test_start, test up to
    end (exclusive); rows outside [.., end) belong to no split."""
    ts = positives["timestamp"].to_numpy()
    pick = lambda m: positives[m].reset_index(drop=True)  # noqa: E731
    return {
        "train": pick(ts < valid_start),
        "valid": pick((ts >= valid_start) & (ts < test_start)),
        "test": pick((ts >= test_start) & (ts < end)),
    }
