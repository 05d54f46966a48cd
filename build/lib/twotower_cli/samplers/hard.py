"""Hard negatives (`sampler=hard`): items sharing an attribute with the positive (kind=rule)
or from the user's mined rank band (kind=mined; the band comes from mining.mined_band)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import find
from twotower_cli.samplers.explicit import ExplicitSampler, draw_excluding


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

    @property
    def needs_band(self) -> bool:
        """Whether `fit` needs the mined band (mining.mined_band, run by the sample stage)."""
        return self.kind == "mined"

    def fit(self, train: pd.DataFrame, n_items: int, items=None,
            band_items: dict | None = None) -> HardNegativeSampler:  # fmt: skip
        """`band_items` ({"users": sorted ids, "items": [users, band width]}) is required for
        kind=mined: the sampler draws from it, it does not search for it."""
        if self.kind == "rule":
            self.groups_ = attribute_groups(items, self.attribute)
        elif band_items is None:
            raise TwoTowerError("sampler=hard kind=mined: fit needs the mined band")
        else:
            self.band_items_ = band_items
        return super().fit(train, n_items, items)

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
        rows_of, has = find(band_users, users)
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
