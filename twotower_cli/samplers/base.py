"""The sampler base class and what every sampler shares: the logQ modes, item frequencies and
the in-batch `batch_fn` (package docstring: what a fitted sampler hands to training)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.training.logq import log_frequency

if TYPE_CHECKING:  # torch is loaded by `batch_fn` (steps.py), at train time only
    import torch

    from twotower_cli.samplers.steps import BatchFn


LOGQ_MODES = ("exact", "streaming", "off")


def item_log_frequency(items: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of `items`; unseen items get the log of half a count."""
    return log_frequency(np.bincount(items, minlength=n_items + 1))


def check_logq(logq: str) -> str:
    if logq not in LOGQ_MODES:
        raise TwoTowerError(f"sampler.logq: {logq!r} not in {LOGQ_MODES}")
    return logq


def at_least(key: str, value: int, low: int) -> int:
    """`value` of `sampler.<key>`, or a one-line error when it is below `low`."""
    if value < low:
        raise TwoTowerError(f"sampler.{key} must be >= {low}, got {value}")
    return value


class Sampler:
    """Base: positives only, in-batch negatives. What the stages read off any sampler (each
    subclass sets its own values):

    - `loss`: the loss used when the config says `loss: auto`;
    - `logq`: exact | streaming | off, which logQ `batch_fn` adds (LOGQ_MODES);
    - `train_only`: the parameters only `batch_fn` reads, at train time: a sample made with
      other values of them is still the right one;
    - `streams`: the examples are the positives themselves, so the sample stage makes them with
      `fit_stream` in one bounded pass instead of `fit` (in-batch samplers);
    - `needs_band`: `fit` takes the mined band (`band_items`), which the sample stage finds
      with mining.mined_band (sampler=hard kind=mined).
    """

    loss: str = "inbatch_softmax"
    logq: str = "exact"
    train_only: tuple[str, ...] = ()
    streams: bool = False
    needs_band: bool = False

    def fit(self, train: pd.DataFrame, n_items: int, items: pd.DataFrame | None = None) -> Sampler:
        """Learn from the training positives (`items`: the encoded item table, for samplers
        that use item attributes)."""
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

    def negatives(self) -> np.ndarray | None:
        return None

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn | None:
        """In-batch: every positive of the batch is also a negative column, its logQ from the
        exact Q (InBatchSampler adds the streaming estimate and shared uniform items)."""
        from twotower_cli.samplers import steps  # torch: at train time only

        return None if self.logq == "off" else steps.in_batch_log_q(item_log_q, None)
