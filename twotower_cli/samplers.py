"""Negative samplers: what goes into a training batch (`twotower sample`, `sampler=...`).

Samplers follow scikit-learn's habits: `__init__` stores parameters, `fit` learns from the
training positives (never validation or test) and sets trailing-underscore attributes,
randomness comes from `seed`. What a fitted sampler hands to training:

- `examples()`: the positives (user, item, label), one row per training positive;
- `negatives()`: explicit negatives as an int64 array [n_positives, n_neg] (row i belongs to
  example i), or None when the batch's other positives are the negatives;
- `item_log_q_`: log of each item's probability per draw of appearing as a negative (index 0 =
  padding), the Q of the loss's logQ correction (Yi et al., RecSys 2019);
- `batch_fn(item_log_q, seed)`: the per-batch work training does for this sampler (extra shared
  negatives, logQ of every column, the streaming frequency estimate), or None.

The batch is a dict of tensors: `user`, `item`, `label` [B]; optional `neg` ([B, n] per-row or
[m] shared), `log_q` [B] and `neg_log_q` (shape of `neg`): log of each column's expected count
among the batch's negatives. The loss (losses.py) decides what to do with them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower_cli.errors import TwoTowerError
from twotower_cli.losses import StreamingFrequency

BatchFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
LOGQ_MODES = ("exact", "streaming", "off")


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, for vectorised membership tests."""
    return users.astype(np.int64) * (n_items + 1) + items.astype(np.int64)


def item_log_frequency(items: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of `items`; unseen items get the log of half a count."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64)
    counts[counts == 0] = 0.5
    return np.log(counts / counts[1:].sum()).astype(np.float32)


def _check_logq(logq: str) -> str:
    if logq not in LOGQ_MODES:
        raise TwoTowerError(f"sampler.logq: {logq!r} not in {LOGQ_MODES}")
    return logq


class Sampler:
    """Base: positives only. `loss` is the loss used when the config says `loss: auto`;
    `train_only` names the parameters only `batch_fn` reads, at train time: a sample made with
    other values of them is still the right one."""

    loss = "inbatch_softmax"
    logq = "exact"
    train_only: tuple[str, ...] = ()

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

        return add_log_q

    def _streaming(self, item_log_q: torch.Tensor) -> StreamingFrequency:
        return StreamingFrequency(len(item_log_q), alpha=getattr(self, "alpha", 0.05))


class InBatchSampler(Sampler):
    """In-batch softmax: the batch's other positives are the negatives.

    logq: exact (training frequency) | streaming (Yi et al.'s estimate from the batches seen so
    far; `alpha` is its moving-average rate) | off.
    """

    train_only = ("alpha",)

    def __init__(self, logq: str = "exact", alpha: float = 0.05) -> None:
        self.logq = _check_logq(logq)
        self.alpha = alpha

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> InBatchSampler:
        super().fit(train, n_items)
        if self.logq == "off":
            self.item_log_q_ = np.zeros(n_items + 1, dtype=np.float32)
        return self


class MixedSampler(InBatchSampler):
    """Mixed negative sampling (Yang et al., WWW 2020): the batch's positives plus `n_uniform`
    catalogue items drawn uniformly per batch, shared by every row.

    Every column's logQ is the log of its expected count among the negatives under the mixture:
    B * Q(item) from the batch (Q exact or streaming) plus n_uniform / n_items from the uniform
    draw, so the two sources are corrected on one scale.
    """

    train_only = ("alpha", "n_uniform")

    def __init__(self, n_uniform: int = 1024, logq: str = "exact", alpha: float = 0.05) -> None:
        super().__init__(logq, alpha)
        if n_uniform < 1:
            raise TwoTowerError(f"sampler.n_uniform must be >= 1, got {n_uniform}")
        self.n_uniform = n_uniform

    def batch_fn(self, item_log_q: torch.Tensor, seed: int = 0) -> BatchFn:
        n_items = len(item_log_q) - 1
        gen = torch.Generator().manual_seed(seed)
        streaming = self._streaming(item_log_q) if self.logq == "streaming" else None
        log_uniform = float(np.log(self.n_uniform / n_items))

        def add_uniform(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            item = batch["item"]
            neg = torch.randint(1, n_items + 1, (self.n_uniform,), generator=gen)
            neg = neg.to(item.device)
            out = {**batch, "neg": neg}
            if self.logq == "off":
                return out
            if streaming is not None:
                streaming.update(item)
                count = lambda ids: streaming.log_prob(ids)  # noqa: E731
            else:
                count = lambda ids: item_log_q[ids] + float(np.log(len(item)))  # noqa: E731
            mix = lambda ids: torch.logaddexp(count(ids), torch.tensor(log_uniform))  # noqa: E731
            return {**out, "log_q": mix(item), "neg_log_q": mix(neg)}

        return add_uniform


class ExplicitSampler(Sampler):
    """Base of the samplers that draw `n_neg` negatives per positive at `sample` time, never one
    of the user's training positives. `item_log_q_` is the drawn negatives' item frequency
    (the marginal of the proposal, whatever the sampler), so sampled softmax can correct by it."""

    loss = "bce"

    def __init__(self, n_neg: int = 4, seed: int = 0, logq: str = "exact") -> None:
        if n_neg < 1:
            raise TwoTowerError(f"sampler.n_neg must be >= 1, got {n_neg}")
        self.n_neg = n_neg
        self.seed = seed
        self.logq = _check_logq(logq)
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
        if self.logq == "off":
            return None
        log_n = float(np.log(self.n_neg))

        def add_log_q(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            log_q = item_log_q[batch["item"]] + log_n
            return {**batch, "log_q": log_q, "neg_log_q": item_log_q[batch["neg"]] + log_n}

        return add_log_q


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


class HardNegativeSampler(ExplicitSampler):
    """Hard negatives mixed with easy random ones: per positive, round(n_neg * hard_ratio) hard
    and the rest uniform.

    kind=rule: items sharing `attribute` (an item column; null = the first feature after the id,
    e.g. genres on MovieLens) with the positive. kind=mined: per user, items ranked `band`
    (1-based, inclusive; default 101..500) by an earlier run's embeddings (`source_dir`, derived
    from `source_run`), the "similar but not too similar" band of Facebook EBR / Baidu Mobius.
    Users without a vector there get uniform negatives.
    """

    def __init__(
        self, n_neg: int = 4, kind: str = "rule", hard_ratio: float = 0.5,
        attribute: str | None = None, source_run: str | None = None,
        source_dir: str | None = None, band: tuple[int, int] = (101, 500), seed: int = 0,
        logq: str = "exact",
    ) -> None:  # fmt: skip
        super().__init__(n_neg, seed, logq)
        if kind not in ("rule", "mined"):
            raise TwoTowerError(f"sampler.kind: {kind!r} not in ('rule', 'mined')")
        if not 0.0 <= hard_ratio <= 1.0:
            raise TwoTowerError(f"sampler.hard_ratio must be in [0, 1], got {hard_ratio}")
        if not 1 <= band[0] <= band[1]:
            raise TwoTowerError(f"sampler.band must be 1 <= first <= last, got {list(band)}")
        self.kind = kind
        self.hard_ratio = hard_ratio
        self.attribute = attribute
        self.source_run = source_run
        self.source_dir = source_dir
        self.band = tuple(band)

    def fit(self, train: pd.DataFrame, n_items: int, items=None) -> HardNegativeSampler:
        if self.kind == "rule":
            self.groups_ = attribute_groups(items, self.attribute)
        else:
            self.band_items_ = self._mine(train, n_items)
        return super().fit(train, n_items, items)

    def _mine(self, train: pd.DataFrame, n_items: int) -> dict:
        from twotower_cli.retrieval import build_index, search

        src = Path(self.source_dir or "")
        needed = [src / f for f in ("user_vectors.npy", "user_ids.npy", "item_vectors.npy")]
        if self.source_dir is None or not all(p.exists() for p in needed):
            sampler, _, run = str(self.source_run).partition("/")
            raise TwoTowerError(
                f"sampler=hard kind=mined: no embeddings at {src} (sampler.source_run="
                f"{self.source_run}): run `twotower run sampler={sampler} paths.run={run}` first"
            )
        items = np.load(src / "item_vectors.npy")
        if len(items) != n_items:
            raise TwoTowerError(f"{src}/item_vectors.npy: {len(items)} items, data has {n_items}")
        users = np.load(src / "user_ids.npy")
        first, last = self.band
        last = min(last, n_items)
        top = search(build_index(items, "Flat"), np.load(src / "user_vectors.npy"), last)
        return {"users": users, "items": top[:, first - 1 : last]}

    def _draw(self) -> np.ndarray:
        n_hard = int(round(self.n_neg * self.hard_ratio))
        out = self._draw_weighted(None)
        if n_hard == 0:
            return out
        users = np.repeat(self.train_["user"].to_numpy(), n_hard)
        pos = np.repeat(self.train_["item"].to_numpy(), n_hard)
        draw = self._rule_draw(pos) if self.kind == "rule" else self._mined_draw(users)
        out[:, :n_hard] = draw_excluding(users, self.train_, self.n_items_, draw).reshape(
            -1, n_hard
        )
        return out

    def _rule_draw(self, pos: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A uniform item among those sharing a random one of the positive's attribute values
        (an item alone in its groups gets a uniform item)."""
        values, starts, members = self.groups_
        rng, n = self.rng_, self.n_items_

        def draw(rows: np.ndarray) -> np.ndarray:
            vals = values[pos[rows]]  # [r, width], 0 = none
            n_vals = (vals > 0).sum(1)
            pick = vals[np.arange(len(rows)), (rng.random(len(rows)) * n_vals).astype(np.int64)
                        .clip(max=vals.shape[1] - 1)]  # fmt: skip
            size = np.where(n_vals > 0, starts[pick + 1] - starts[pick], 0)
            offset = (rng.random(len(rows)) * size).astype(np.int64)
            items = members[(starts[pick] + offset).clip(max=max(len(members) - 1, 0))]
            return np.where(size > 1, items, rng.integers(1, n + 1, len(rows)))

        return draw

    def _mined_draw(self, users: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A uniform item of the user's mined band (a uniform item for users without one)."""
        band_users, band = self.band_items_["users"], self.band_items_["items"]
        rows_of = np.searchsorted(band_users, users).clip(max=len(band_users) - 1)
        has = band_users[rows_of] == users
        rng, n = self.rng_, self.n_items_

        def draw(rows: np.ndarray) -> np.ndarray:
            col = rng.integers(0, band.shape[1], len(rows))
            items = band[rows_of[rows], col]
            return np.where(has[rows] & (items > 0), items, rng.integers(1, n + 1, len(rows)))

        return draw


def attribute_groups(items: pd.DataFrame | None, attribute: str | None):
    """Items grouped by an attribute: (values [n_items+1, width], starts, members) where the
    items with value v are members[starts[v]:starts[v + 1]] (CSR, vectorised lookups)."""
    if items is None:
        raise TwoTowerError("sampler=hard kind=rule needs the item table")
    names = [c for c in items.columns if c != "item"]
    name = attribute or (names[0] if names else None)
    if name not in items.columns or name == "item":
        raise TwoTowerError(f"sampler.attribute: {name!r} is not an item column {names}")
    col = items[name]
    if col.dtype == object:
        values = np.stack(col.to_numpy()).astype(np.int64)
    elif np.issubdtype(col.dtype, np.integer):
        values = col.to_numpy(dtype=np.int64)[:, None]
    else:
        raise TwoTowerError(f"sampler.attribute: item column {name!r} is not categorical")
    values = np.concatenate([np.zeros((1, values.shape[1]), np.int64), values])
    item_ids = np.repeat(np.arange(len(values)), values.shape[1])
    flat = values.ravel()
    keep = flat > 0
    order = np.argsort(flat[keep], kind="stable")
    members = item_ids[keep][order]
    starts = np.searchsorted(flat[keep][order], np.arange(flat.max(initial=0) + 2))
    return values, starts, members


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
    known = np.unique(
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
            "sampler.use_exposures: this sampler trains in-batch, with no explicit negatives; "
            "use sampler=random|popularity|hard"
        )
    if not exposures_path.exists():
        raise TwoTowerError(
            f"{exposures_path}: no exposures (every row of the log is a positive); "
            "sampler.use_exposures needs shown-but-not-chosen rows"
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
