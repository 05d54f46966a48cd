"""Negative samplers: what goes into a training batch (`twotower sample`).

Samplers follow scikit-learn's habits: `__init__` stores parameters, `fit` learns from the
training positives and sets trailing-underscore attributes, randomness comes from `seed`.
`examples()` returns the rows training iterates over (user, item, label); `item_log_q_` is the
log sampling probability of each item id (index 0 = padding) for the loss's logQ correction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_cli.errors import TwoTowerError


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, for vectorised membership tests."""
    return users.astype(np.int64) * (n_items + 1) + items.astype(np.int64)


def item_log_frequency(items: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of the positives; unseen items get the log of half a count."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64)
    counts[counts == 0] = 0.5
    return np.log(counts / counts[1:].sum()).astype(np.float32)


class Sampler:
    """Base: positives only. `loss` is the loss used when the config says `loss: auto`."""

    loss = "inbatch_softmax"

    def fit(self, train: pd.DataFrame, n_items: int) -> Sampler:
        if train.empty:
            raise TwoTowerError("sampler: the training split has no positives")
        self.train_ = train[["user", "item"]].reset_index(drop=True)
        self.n_items_ = n_items
        self.item_log_q_ = item_log_frequency(self.train_["item"].to_numpy(), n_items)
        return self

    def examples(self) -> pd.DataFrame:
        out = self.train_.copy()
        out["label"] = np.float32(1.0)
        return out


class InBatchSampler(Sampler):
    """In-batch softmax: the batch's other positives are the negatives (logq: exact | off)."""

    def __init__(self, logq: str = "exact") -> None:
        if logq not in ("exact", "off"):
            raise TwoTowerError(f"sampler.logq: {logq!r} not in ('exact', 'off')")
        self.logq = logq

    def fit(self, train: pd.DataFrame, n_items: int) -> InBatchSampler:
        super().fit(train, n_items)
        if self.logq == "off":
            self.item_log_q_ = np.zeros(n_items + 1, dtype=np.float32)
        return self


class RandomNegativeSampler(Sampler):
    """Global random: n_neg uniform catalogue items per positive, never a user's positive."""

    loss = "bce"

    def __init__(self, n_neg: int = 4, seed: int = 0) -> None:
        if n_neg < 1:
            raise TwoTowerError(f"sampler.n_neg must be >= 1, got {n_neg}")
        self.n_neg = n_neg
        self.seed = seed

    def examples(self) -> pd.DataFrame:
        pos = self.train_
        users = np.repeat(pos["user"].to_numpy(), self.n_neg)
        items = draw_excluding(
            users, pos, self.n_items_, np.random.default_rng(self.seed), probs=None
        )
        neg = pd.DataFrame({"user": users, "item": items, "label": np.float32(0.0)})
        return pd.concat([super().examples(), neg], ignore_index=True)


def draw_excluding(
    users: np.ndarray,
    positives: pd.DataFrame,
    n_items: int,
    rng: np.random.Generator,
    probs: np.ndarray | None,
    max_rounds: int = 100,
) -> np.ndarray:
    """One item per entry of `users`, drawn from `probs` over ids 1..n_items (uniform when
    None), redrawing (vectorised) any that hit that user's positives."""
    known = np.unique(
        pair_keys(positives["user"].to_numpy(), positives["item"].to_numpy(), n_items)
    )
    items = np.empty(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        items[todo] = rng.choice(n_items, size=len(todo), p=probs) + 1
        keys = pair_keys(users[todo], items[todo], n_items)
        pos = np.searchsorted(known, keys).clip(max=len(known) - 1)
        todo = todo[known[pos] == keys]
        if len(todo) == 0:
            return items
    raise TwoTowerError("sampler: could not draw negatives; users have interacted with every item")


# --- exposures: shown but not chosen, real negatives (`sampler.use_exposures=true`) ---
# Generic over samplers: the rows are added after the sampler's own examples, so any sampler
# whose loss takes explicit labelled negatives (bce) can mix them with its sampled ones.
EXPOSURE_KEYS = ("use_exposures", "exposures_per_positive")


def add_exposure_negatives(
    examples: pd.DataFrame, sampler: Sampler, exposures_path, per_positive: float, seed: int
) -> pd.DataFrame:
    """examples + round(per_positive * positives) exposure rows with label 0, drawn without
    replacement (all of them when there are fewer)."""
    if sampler.loss != "bce":
        raise TwoTowerError(
            f"sampler.use_exposures: {type(sampler).__name__} trains with {sampler.loss}, "
            "which takes no labelled negatives; use a sampler with explicit negatives"
        )
    if not exposures_path.exists():
        raise TwoTowerError(
            f"{exposures_path}: no exposures (every row of the log is a positive); "
            "sampler.use_exposures needs shown-but-not-chosen rows"
        )
    exposures = pd.read_parquet(exposures_path, columns=["user", "item"])
    n_pos = int((examples["label"].to_numpy() > 0).sum())
    n = min(len(exposures), int(round(per_positive * n_pos)))
    pick = np.sort(np.random.default_rng(seed).choice(len(exposures), n, replace=False))
    neg = exposures.iloc[pick].assign(label=np.float32(0.0))
    return pd.concat([examples, neg], ignore_index=True)
