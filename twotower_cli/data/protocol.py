"""Published evaluation protocols applied to any data set (`twotower preprocess protocol=NAME`).

A protocol fixes what makes a positive, which users and items survive (an iterated k-core),
how positives split into train/valid/test and what evaluation masks; conf/protocol/*.yaml
copy them from their sources (docs/published.md):

    default   the data set's own label and split (`dataset.split`), train+valid masked
    recbole   RecBole's ML-1M general benchmark: rating >= 3, iterated 10-core, each user's
              rows in one seeded random order (torch.randperm, as RecBole's `RO` shuffle)
              split 8:1:1 with RecBole's rounding (`_calcu_split_ids`), train+valid masked
    loo       every rating a positive; per user by time, the last is test, the one before it
              validation (generative-recommenders' SASRec/HSTU protocol), earlier items masked
    deepmatch as loo, nothing masked (shenweichen/DeepMatch's ML-1M examples)

The k-core runs on the clean log's raw ids before encoding, so the vocabularies (and the
catalogue evaluation ranks) hold only the surviving users and items.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.settings import check_bounds
from twotower_cli.data import sql
from twotower_cli.data.engine import Engine
from twotower_cli.data.tables import RawData

POSITIVES = ("label", "all", "rating")
SPLITS = ("dataset", "ratio", "loo")
MASKS = ("seen", "none")
BASELINES_FIT = ("train+valid", "train")


@dataclass
class ProtocolSettings:
    """`dataset.protocol` (conf/protocol/<name>.yaml); absent = `default`."""

    name: str = "default"
    # label: the data set's label column; all: every row; rating: `rating` >= min_rating
    positives: str = field(default="label", metadata={"choices": POSITIVES})
    min_rating: float = 4.0
    # iterated k-core on the positives (users and items with >= k_core each); 0 = none
    k_core: int = field(default=0, metadata={"ge": 0})
    # dataset: dataset.split; ratio: seeded random order, `ratios`; loo: leave last one out
    split: str = field(default="dataset", metadata={"choices": SPLITS})
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 2020
    # seen: evaluation masks each user's train+valid items; none: nothing masked
    mask: str = field(default="seen", metadata={"choices": MASKS})
    # what popularity counts and EASE's final fit read: train+valid, or train (RecBole's
    # trainer fits on train only; its validation only picks)
    baselines_fit: str = field(default="train+valid", metadata={"choices": BASELINES_FIT})
    # the metrics the evaluate table prints (every one is computed)
    metrics: list[str] = field(
        default_factory=lambda: ["recall", "precision", "ndcg", "hit_rate", "coverage"]
    )

    def __post_init__(self) -> None:
        check_bounds(self, "dataset.protocol")
        if len(self.ratios) != 3 or min(self.ratios) <= 0 or abs(sum(self.ratios) - 1) > 1e-9:
            raise TwoTowerError(f"dataset.protocol.ratios: three positive shares summing to 1, "
                                f"got {list(self.ratios)}")  # fmt: skip

    @property
    def filters(self) -> bool:
        """Whether the protocol changes the log or the split (default: neither)."""
        return self.positives != "label" or self.k_core > 0 or self.split != "dataset"


def settings(cfg) -> ProtocolSettings:
    """The protocol of a `dataset` config section (a dict or DictConfig)."""
    p = cfg.get("protocol") if cfg is not None else None
    return ProtocolSettings(**dict(p)) if p else ProtocolSettings()


def positive_sql(p: ProtocolSettings, label: str, types: dict[str, str]) -> str:
    """The SQL condition of a positive row under the protocol."""
    if p.positives == "all":
        return "true"
    if p.positives == "rating":
        if "rating" not in types:
            raise TwoTowerError(
                "dataset.protocol.positives=rating: the log has no 'rating' column"
            )
        return f"coalesce({sql.q('rating')} >= {float(p.min_rating)!r}, false)"
    if label not in types:
        raise TwoTowerError(f"dataset.protocol.positives=label: the log has no {label!r} column")
    return sql.positive(label, types[label])


def k_core(eng: Engine, source: str, pos: str, k: int) -> tuple[int, int]:
    """Table `kcore(user_id, item_id)`: the positives of `source` whose user and item each keep
    >= k of them, iterated to the fixed point. Each pass drops every user and every item under
    k counted on the same rows (RecBole's `_filter_by_inter_num`; the k-core is unique, so the
    order of drops does not change it). Returns (positives before, passes)."""
    eng.table("kcore", f"SELECT user_id, item_id FROM {source} WHERE {pos}")
    before = n = eng.one("SELECT count(*) FROM kcore")[0]
    passes = 0
    while True:
        eng.table(
            "kcore",
            f"""
SELECT user_id, item_id FROM kcore
WHERE user_id IN (SELECT user_id FROM kcore GROUP BY user_id HAVING count(*) >= {int(k)})
  AND item_id IN (SELECT item_id FROM kcore GROUP BY item_id HAVING count(*) >= {int(k)})""",
        )
        passes += 1
        left = eng.one("SELECT count(*) FROM kcore")[0]
        if left == n:
            return int(before), passes
        n = left


def restrict(eng: Engine, raw: RawData, p: ProtocolSettings, pos: str) -> tuple[RawData, dict]:
    """The raw user and item tables cut to those with a positive in the k-core of table `clean`
    (k = max(k_core, 1): a protocol's catalogue is the items it can score), and the counts."""
    before, passes = k_core(eng, "clean", pos, max(p.k_core, 1))
    n, users, items = eng.one(
        "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM kcore"
    )
    if n == 0:
        raise TwoTowerError(f"{raw.source}: no positives left under protocol {p.name!r} "
                            f"(k_core={p.k_core})")  # fmt: skip
    keep = {}
    for side in ("user", "item"):
        ids = pd.Series(eng.numpy(f"SELECT DISTINCT {side}_id FROM kcore")).astype(str)
        table = raw.users if side == "user" else raw.items
        keep[side] = table[table[f"{side}_id"].astype(str).isin(ids)].reset_index(drop=True)
    counts = {"protocol_positives": before, "kcore_passes": passes,
              "kcore_interactions": int(n), "kcore_users": int(users),
              "kcore_items": int(items)}  # fmt: skip
    return replace(raw, users=keep["user"], items=keep["item"]), counts


def ratio_counts(n: np.ndarray, ratios: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) rows of a user with n rows under RecBole's `_calcu_split_ids`:
    cnt = [int(r * n) for r], cnt[0] = n - sum(cnt[1:]), then while cnt[0] > 1 each later
    part with 0 < r * n < 1 takes one row from train (last part first)."""
    n = np.asarray(n, dtype=np.int64)
    cnt = [(r * n.astype(np.float64)).astype(np.int64) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        bump = (cnt[0] > 1) & (ratios[-i] * n > 0) & (ratios[-i] * n < 1)
        # the loop breaks at the first i where cnt[0] <= 1: later parts get no bump
        cnt[-i] = cnt[-i] + bump
        cnt[0] = cnt[0] - bump
    return cnt[0], cnt[1]


def loo_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) rows under leave-one-out: the last row tests (n >= 2), the one before it
    validates (n >= 3)."""
    n = np.asarray(n, dtype=np.int64)
    n_test = (n >= 2).astype(np.int64)
    n_valid = (n >= 3).astype(np.int64)
    return n - n_test - n_valid, n_valid


def shuffle_rank(n: int, seed: int) -> np.ndarray:
    """Each row's position in RecBole's shuffle: `torch.randperm(n)` right after
    `torch.manual_seed(seed)` puts row perm[j] at position j."""
    import torch  # only here: the data layer loads torch only for RecBole's shuffle

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n, dtype=np.int64)
    return rank


def split_table(eng: Engine, p: ProtocolSettings, source: str, names: list[str]) -> None:
    """Table `split` of `source`'s rows (user, item, timestamp, _row among them) under a ratio
    or leave-one-out protocol: per user, rows in the protocol's order; the first n_train are
    train, the next n_valid valid, the rest test."""
    if p.split == "ratio":
        rows = eng.numpy(f"SELECT _row FROM {source} ORDER BY _row")
        eng.frame("porder", pd.DataFrame({"_row": rows, "pos": shuffle_rank(len(rows), p.seed)}))
        order = "o.pos"
    else:
        eng.frame("porder", pd.DataFrame({"_row": np.zeros(0, np.int64), "pos": np.zeros(0)}))
        order = 's."timestamp", s._row'
    sizes = eng.numpy(f'SELECT DISTINCT count(*) FROM {source} GROUP BY "user"')
    n_train, n_valid = ratio_counts(sizes, p.ratios) if p.split == "ratio" else loo_counts(sizes)
    eng.frame("pcounts", pd.DataFrame({"n": sizes.astype(np.int64), "n_train": n_train,
                                       "n_valid": n_valid}))  # fmt: skip
    eng.table("split", sql.protocol_split(source, names, order, p.split == "ratio"))
