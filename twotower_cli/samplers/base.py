"""The sampler base class and what every sampler shares: the logQ modes, item frequencies and
the in-batch `batch_fn` (package docstring: what a fitted sampler hands to training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.training.losses import StreamingFrequency, log_frequency

BatchFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class BatchStep:
    """A sampler's per-batch work (`fn`) with the state it carries from batch to batch (the
    streaming frequency estimate, the uniform draws' generator), which a resumed training run
    restores (trainer.py)."""

    def __init__(self, fn: BatchFn, streaming: StreamingFrequency | None = None,
                 gen: torch.Generator | None = None) -> None:  # fmt: skip
        self.fn, self.streaming, self.gen = fn, streaming, gen

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fn(batch)

    def state_dict(self) -> dict:
        return {"streaming": self.streaming.state_dict() if self.streaming else None,
                "gen": self.gen.get_state() if self.gen is not None else None}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self.streaming is not None:
            self.streaming.load_state_dict(state["streaming"])
        if self.gen is not None:
            self.gen.set_state(state["gen"])


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
        """In-batch: every positive of the batch is also a negative column; its expected
        count among a batch of B draws is B * Q(item)."""
        if self.logq == "off":
            return None
        streaming = self._streaming(item_log_q) if self.logq == "streaming" else None

        def add_log_q(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            item = batch["item"]
            if streaming is not None:
                log_q = streaming.update(item).log_prob(item)
            else:
                log_q = item_log_q[item] + float(np.log(len(item)))
            return {**batch, "log_q": log_q}

        return BatchStep(add_log_q, streaming)

    def _streaming(self, item_log_q: torch.Tensor) -> StreamingFrequency:
        return StreamingFrequency(len(item_log_q), alpha=getattr(self, "alpha", 0.05))
