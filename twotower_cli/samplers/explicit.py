"""Samplers that draw explicit negatives per positive at `sample` time (`sampler=random`,
`sampler=popularity`), and the vectorised draw that never returns a user's positive."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import find, pair_keys, sorted_unique
from twotower_cli.samplers.base import Sampler, at_least, check_logq, item_log_frequency

if TYPE_CHECKING:  # torch is loaded by `batch_fn` (steps.py), at train time only
    import torch

    from twotower_cli.samplers.steps import BatchFn


class ExplicitSampler(Sampler):
    """Base of the samplers that draw `n_neg` negatives per positive at `sample` time, never one
    of the user's training positives. `item_log_q_` is the drawn negatives' item frequency
    (the marginal of the proposal, whatever the sampler), so sampled softmax can correct by it."""

    loss = "bce"

    def __init__(self, n_neg: int = 4, seed: int = 0, logq: str = "exact") -> None:
        self.n_neg = at_least("n_neg", n_neg, 1)
        self.seed = seed
        self.logq = check_logq(logq)
        if logq == "streaming":
            raise TwoTowerError("sampler.logq: streaming applies to in-batch samplers only")

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> ExplicitSampler:
        super().fit(train, n_items, items)
        self.rng_ = np.random.default_rng(self.seed)
        self.negatives_ = self._draw()
        if self.logq == "off":
            self.item_log_q_ = np.zeros(n_items + 1, dtype=np.float32)
        else:
            self.item_log_q_ = item_log_frequency(self.negatives_.ravel(), n_items)
        return self

    def _draw(self) -> np.ndarray:
        """[n_positives, n_neg] negatives."""
        raise NotImplementedError

    def _draw_weighted(self, probs: np.ndarray | None) -> np.ndarray:
        users = np.repeat(self.train_["user"].to_numpy(), self.n_neg)
        n = self.n_items_
        draw = lambda rows: self.rng_.choice(n, size=len(rows), p=probs) + 1  # noqa: E731
        items = draw_excluding(users, self.train_, n, draw)
        return items.reshape(-1, self.n_neg)

    def negatives(self) -> np.ndarray:
        return self.negatives_

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn | None:
        from twotower_cli.samplers import steps  # torch: at train time only

        return None if self.logq == "off" else steps.explicit_log_q(item_log_q, self.n_neg)


class RandomNegativeSampler(ExplicitSampler):
    """Global random: n_neg uniform catalogue items per positive."""

    def _draw(self) -> np.ndarray:
        return self._draw_weighted(None)


class PopularitySampler(ExplicitSampler):
    """Popularity-suppressed negatives: mode=power draws item i with probability proportional
    to max(count_i, 1)^alpha (word2vec's 0.75: popular items stay frequent, the tail gets a
    share); mode=rank proportional to rank_i^-alpha (rank 1 = most liked, ties by id), which
    depends only on the order of popularity, not on its scale."""

    def __init__(
        self, n_neg: int = 4, mode: str = "power", alpha: float = 0.75, seed: int = 0,
        logq: str = "exact",
    ) -> None:  # fmt: skip
        super().__init__(n_neg, seed, logq)
        if mode not in ("power", "rank"):
            raise TwoTowerError(f"sampler.mode: {mode!r} not in ('power', 'rank')")
        self.mode = mode
        self.alpha = alpha

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> PopularitySampler:
        counts = np.bincount(train["item"].to_numpy(), minlength=n_items + 1)[1:]
        self.item_probs_ = popularity_probs(counts, self.mode, self.alpha)
        return super().fit(train, n_items, items)

    def _draw(self) -> np.ndarray:
        return self._draw_weighted(self.item_probs_)


def popularity_probs(counts: np.ndarray, mode: str, alpha: float) -> np.ndarray:
    """Sampling probabilities over items 1..n (index 0 here = item 1) from their counts."""
    if mode == "power":
        weight = np.maximum(counts, 1).astype(np.float64) ** alpha
    else:
        order = np.lexsort((np.arange(len(counts)), -counts))
        rank = np.empty(len(counts), dtype=np.float64)
        rank[order] = np.arange(1, len(counts) + 1)
        weight = rank**-alpha
    return weight / weight.sum()


def draw_excluding(
    users: np.ndarray,
    positives: pd.DataFrame,
    n_items: int,
    draw: Callable[[np.ndarray], np.ndarray],
    max_rounds: int = 50,
) -> np.ndarray:
    """One item per entry of `users` from `draw(rows) -> items` (ids 1..n_items), redrawing
    (vectorised) any that hit that user's positives; after `max_rounds` the rest are drawn
    uniformly, and a user who has every item as a positive is an error."""
    known = sorted_unique(
        pair_keys(positives["user"].to_numpy(), positives["item"].to_numpy(), n_items)
    )
    items = np.empty(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    rng = np.random.default_rng(len(users))
    for round_ in range(2 * max_rounds):
        # a hard draw that keeps hitting positives falls back to uniform
        items[todo] = (
            draw(todo) if round_ < max_rounds else rng.integers(1, n_items + 1, len(todo))
        )
        todo = todo[find(known, pair_keys(users[todo], items[todo], n_items))[1]]
        if len(todo) == 0:
            return items
    raise TwoTowerError("sampler: could not draw negatives; users have interacted with every item")
