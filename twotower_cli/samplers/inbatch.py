"""In-batch samplers: the batch's other positives are the negatives (`sampler=inbatch`), plus
shared uniform items (`sampler=mixed`); shared uniform items alone (`sampler=uniform`); every
catalogue item (`sampler=full`, a full softmax)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.samplers.base import Sampler, at_least, check_logq
from twotower_cli.training.logq import log_frequency

if TYPE_CHECKING:  # torch is loaded by `batch_fn` (steps.py), at train time only
    import torch

    from twotower_cli.samplers.steps import BatchFn


class InBatchSampler(Sampler):
    """In-batch softmax: the batch's other positives are the negatives.

    logq: exact (training frequency) | streaming (Yi et al.'s estimate from the batches seen so
    far; `alpha` is its moving-average rate) | off. `n_uniform` > 0 adds that many uniform
    catalogue items per batch as MixedSampler does (0: the batch's positives only).
    """

    train_only = ("alpha", "n_uniform")

    def __init__(self, logq: str = "exact", alpha: float = 0.05, n_uniform: int = 0) -> None:
        self.logq = check_logq(logq)
        self.alpha = alpha
        self.n_uniform = at_least("n_uniform", n_uniform, 0)

    # the examples are the positives themselves: the sample stage makes them with
    # `fit_stream`, one pass in batches, never holding the training log whole
    streams = True

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> InBatchSampler:
        super().fit(train, n_items)
        if self.logq == "off":
            self.item_log_q_ = np.zeros(n_items + 1, dtype=np.float32)
        return self

    def fit_stream(self, batches: Iterable[pd.DataFrame], n_items: int,
                   write: Callable[[Iterable[pd.DataFrame]], int]) -> int:  # fmt: skip
        """`fit` then `examples()`, batch by batch: `write` receives the examples' batches
        (the same rows as examples()) and returns how many it wrote; memory is a batch plus
        the item counts."""
        counts = np.zeros(n_items + 1, dtype=np.int64)

        def examples() -> Iterator[pd.DataFrame]:
            for frame in batches:
                pairs = frame[["user", "item"]].reset_index(drop=True)
                counts[:] += np.bincount(pairs["item"].to_numpy(), minlength=n_items + 1)
                yield pairs.assign(label=np.float32(1.0))

        n = write(examples())
        if not n:
            raise TwoTowerError("sampler: the training split has no positives")
        self.n_items_ = n_items
        self.item_log_q_ = (np.zeros(n_items + 1, dtype=np.float32) if self.logq == "off"
                            else log_frequency(counts))  # fmt: skip
        return n

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn | None:
        from twotower_cli.samplers import steps  # torch: at train time only

        streaming = steps.streaming_estimate(item_log_q, self.logq, self.alpha)
        if not self.n_uniform:
            return None if self.logq == "off" else steps.in_batch_log_q(item_log_q, streaming)
        return steps.mixed(item_log_q, self.n_uniform, self.logq, streaming, seed)


class MixedSampler(InBatchSampler):
    """Mixed negative sampling (Yang et al., WWW 2020): the batch's positives plus `n_uniform`
    catalogue items drawn uniformly per batch, shared by every row.

    Every column's logQ is the log of its expected count among the negatives under the mixture:
    B * Q(item) from the batch (Q exact or streaming) plus n_uniform / n_items from the uniform
    draw, so the two sources are corrected on one scale.
    """

    train_only = ("alpha", "n_uniform")

    def __init__(self, n_uniform: int = 1024, logq: str = "exact", alpha: float = 0.05) -> None:
        super().__init__(logq, alpha, at_least("n_uniform", n_uniform, 1))


class UniformSampler(InBatchSampler):
    """Sampled softmax against `n_negatives` catalogue items drawn uniformly per batch and
    shared by every row (SASRec's sampled softmax in facebookresearch/generative-recommenders,
    which draws per position). Every item is equally likely, so the logQ correction is the
    same constant on every column and cancels: no logQ. A draw equal to a row's positive is
    masked by the loss."""

    loss = "sampled_softmax"
    train_only = ("n_negatives",)

    def __init__(self, n_negatives: int = 1024) -> None:
        super().__init__(logq="off")
        self.n_negatives = at_least("n_negatives", n_negatives, 1)

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn:
        from twotower_cli.samplers import steps  # torch: at train time only

        return steps.uniform(item_log_q, self.n_negatives, seed)


class CatalogueSampler(InBatchSampler):
    """Full softmax: every catalogue item is a negative of every row, shared (no sampling, so
    no sampling bias and no logQ: Covington et al. 2016 before sampling; SASRec's
    cross-entropy in Klenitskiy & Vasilev, RecSys 2023). Each step runs the item tower over
    the whole catalogue and fills a [B, n_items] logits buffer, so `fit` refuses a catalogue
    above `max_items`; use `sampler=mixed` or `uniform` there."""

    loss = "full_softmax"
    train_only = ("max_items",)

    def __init__(self, max_items: int = 50_000) -> None:
        super().__init__(logq="off")
        self.max_items = at_least("max_items", max_items, 1)

    def _check(self, n_items: int) -> None:
        if n_items > self.max_items:
            raise TwoTowerError(
                f"sampler=full: {n_items:,} items > sampler.max_items={self.max_items:,} "
                "(a [batch, n_items] softmax per step): use sampler=mixed or sampler=uniform"
            )

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> CatalogueSampler:
        self._check(n_items)
        return super().fit(train, n_items, items)

    def fit_stream(self, batches, n_items: int, write) -> int:
        self._check(n_items)
        return super().fit_stream(batches, n_items, write)

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn:
        from twotower_cli.samplers import steps  # torch: at train time only

        return steps.catalogue(item_log_q)
