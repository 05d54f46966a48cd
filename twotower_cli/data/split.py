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
    frame = frame.sort_values(["user", "timestamp", "item"], kind="stable")
    groups = frame.groupby("user", sort=False)
    n = groups["item"].transform("size").to_numpy()
    rank = groups.cumcount().to_numpy()
    n_out = np.where(n >= min_positives, np.maximum(1, np.floor(fraction * n + 0.5)), 0)
    out = rank >= n - n_out
    return frame[~out].reset_index(drop=True), frame[out].reset_index(drop=True)


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
