"""A synthetic interaction log generated from config (`dataset=synthetic`).

Items have Zipf-like popularity and belong to latent interest clusters; users have a long-tailed
activity and a home cluster; features reveal the clusters only partly, so a trained model beats
popularity and quality stays measurable at any size. Fully vectorised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_cli.data.tables import RawData

DAY = 86_400


def _noisy(truth: np.ndarray, keep: float, n_values: int, rng: np.random.Generator):
    """truth with probability keep, otherwise a uniform random value."""
    noise = rng.integers(0, n_values, len(truth))
    return np.where(rng.random(len(truth)) < keep, truth, noise)


def load(
    n_users: int = 5000,
    n_items: int = 2000,
    n_interactions: int = 100_000,
    n_clusters: int = 20,
    zipf: float = 1.0,
    in_cluster: float = 0.8,
    feature_noise: float = 0.4,
    days: int = 30,
    seed: int = 0,
    **_: object,
) -> RawData:
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, n_clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity = popularity[rng.permutation(n_items)]
    user_cluster = rng.integers(0, n_clusters, n_users)
    activity = rng.pareto(1.5, n_users) + 1.0

    users = rng.choice(n_users, n_interactions, p=activity / activity.sum())
    # in-cluster draws: items sorted by cluster, one global cumulative weight, a draw lands in
    # its cluster's span of that cumulative sum
    order = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(popularity[order])
    bounds = np.concatenate([[0.0], cum])
    first = np.searchsorted(item_cluster[order], np.arange(n_clusters + 1))
    lo, hi = bounds[first[:-1]], bounds[first[1:]]
    c = user_cluster[users]
    r = lo[c] + rng.random(n_interactions) * (hi[c] - lo[c])
    local = order[np.searchsorted(cum, r, side="right").clip(max=n_items - 1)]
    glob = rng.choice(n_items, n_interactions, p=popularity / popularity.sum())
    items = np.where(rng.random(n_interactions) < in_cluster, local, glob)
    inter = pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": rng.integers(0, days * DAY, n_interactions),
            "click": np.int8(1),
        }
    ).drop_duplicates(["user_id", "item_id"], ignore_index=True)

    keep = 1.0 - feature_noise
    user_table = pd.DataFrame(
        {
            "user_id": np.arange(n_users),
            "region": _noisy(user_cluster, keep, n_clusters, rng),
            "age": rng.integers(0, 7, n_users),
        }
    )
    tags = np.stack(
        [_noisy(item_cluster, keep, n_clusters, rng), rng.integers(0, n_clusters, n_items)], 1
    )
    item_table = pd.DataFrame(
        {
            "item_id": np.arange(n_items),
            "category": _noisy(item_cluster, keep, n_clusters, rng),
            "tags": list(tags),
        }
    )
    item_table["tags"] = item_table["tags"].apply(list)
    return RawData(
        interactions=inter,
        users=user_table,
        items=item_table,
        user_fields={"region": "categorical", "age": "categorical"},
        item_fields={"category": "categorical", "tags": "multihot"},
        counts={"generated": n_interactions, "interactions_unique": len(inter)},
    )
