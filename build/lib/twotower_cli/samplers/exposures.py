"""Exposures: shown but not chosen, real negatives (`sampler.exposures.use=true`).

Generic over samplers: the rows are added after the sampler's own examples, so any sampler
whose loss takes explicit labelled negatives (bce) can mix them with its sampled ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError


def add_exposure_negatives(
    examples: pd.DataFrame,
    negatives: np.ndarray | None,
    exposures_path: Path,
    per_positive: float,
    seed: int,
) -> tuple[np.ndarray, int]:
    """Explicit negatives [n, n_neg] plus ceil(per_positive) columns of real negatives: items
    shown to the row's user and not chosen (`exposures.parquet`). round(per_positive * n) slots
    hold an exposure (default: as many as the positives); the other slots, and rows of users
    with no exposures, repeat a sampled negative. Returns the negatives and the exposure count."""
    if negatives is None:
        raise TwoTowerError(
            "exposures.use: this sampler trains in-batch, with no explicit negatives; "
            "use sampler=random|popularity|hard"
        )
    if not exposures_path.exists():
        raise TwoTowerError(
            f"{exposures_path}: no exposures (every row of the log is a positive); "
            "exposures.use needs shown-but-not-chosen rows"
        )
    rng = np.random.default_rng(seed)
    expo = pd.read_parquet(exposures_path, columns=["user", "item"]).sort_values("user")
    users = examples["user"].to_numpy()
    n_users = int(max(users.max(), expo["user"].max())) + 1
    count = np.bincount(expo["user"].to_numpy(), minlength=n_users)
    start = np.concatenate([[0], np.cumsum(count)])[users]
    width = max(1, int(np.ceil(per_positive)))
    offset = np.floor(rng.random((len(users), width)) * count[users][:, None]).astype(np.int64)
    items = expo["item"].to_numpy()[np.minimum(start[:, None] + offset, max(len(expo) - 1, 0))]
    use = count[users][:, None] > 0
    slots = np.flatnonzero(use.ravel())
    keep = rng.choice(slots, min(len(slots), int(round(per_positive * len(users)))), replace=False)
    chosen = np.zeros(use.size, dtype=bool)
    chosen[keep] = True
    chosen = chosen.reshape(use.shape)
    extra = np.where(chosen, items, negatives[:, :1])
    return np.concatenate([negatives, extra], axis=1), int(chosen.sum())
