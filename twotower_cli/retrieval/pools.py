"""What `twotower evaluate` reports beside the metrics: the trending baseline and the figures
that keep a candidate pool honest (candidate coverage, recall on items training never saw).

A pool (news: the articles fresh enough to show) restricts what is ranked, never the truth:
a test click outside the pool stays in every metric's denominator, so a pool that excludes
true clicks pays for it, and `candidate_coverage` says how much.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower_cli.core.keys import row_keys
from twotower_cli.core.layout import FILES
from twotower_cli.retrieval.metrics import ranking_metrics
from twotower_cli.retrieval.search import EvalSet, popularity_ranking, top_unseen

HOUR = 3600


def trending_ranking(seen: pd.DataFrame, at: int, hours: float, n_items: int, n_users: int,
                     depth: int, ids: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The same list for every user: items by their positives in the `hours` before `at`, ties
    broken by their latest positive before `at` (recency), then by id; `ids` restricts it to
    those items (a candidate pool). `seen`: the positives evaluation masks (train + valid)."""
    ts = seen["timestamp"].to_numpy()
    before = ts < at
    item = seen["item"].to_numpy()[before]
    recent = ts[before] >= at - hours * HOUR
    counts = np.bincount(item[recent], minlength=n_items + 1)
    latest = np.full(n_items + 1, -np.inf)  # never a positive before `at`: last
    np.maximum.at(latest, item, ts[before].astype(np.float64))
    ids = np.arange(1, n_items + 1) if ids is None else np.asarray(ids)
    order = ids[np.lexsort((ids, -latest[ids], -counts[ids]))[:depth]]
    return np.broadcast_to(order, (n_users, len(order)))


def candidate_coverage(ev: EvalSet, pool: np.ndarray, n_items: int) -> float:
    """Share of the test's (user, item) truth pairs whose item is in the pool."""
    return float(np.isin(ev.truth % (n_items + 1), pool).mean()) if len(ev.truth) else 0.0


def cold_metrics(top: np.ndarray, ev: EvalSet, cold: np.ndarray, ks: list[int],
                 n_items: int) -> dict[str, float]:  # fmt: skip
    """`cold_recall@k`: recall over the test clicks on `cold` items (never a training
    positive), averaged over the users who have such clicks, and `cold_click_share`: the share
    of the test's (user, item) clicks that are cold; {} when none is."""
    width = n_items + 1
    is_cold = np.isin(ev.truth % width, cold)
    if not is_cold.any():
        return {}
    truth = ev.truth[is_cold]
    rows = np.unique(truth // width)
    # renumber those users 0..m-1 in the truth keys, as ranking_metrics wants
    keys = row_keys(np.searchsorted(rows, truth // width), truth % width, n_items)
    n_truth = np.bincount(keys // width, minlength=len(rows))
    out = ranking_metrics(top[rows], keys, n_truth, ks, n_items)
    return {f"cold_recall@{k}": out[f"recall@{k}"] for k in ks} | {
        "cold_click_share": float(is_cold.mean())
    }


def cold_items(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """Item ids 1..n_items that are no training positive."""
    trained = np.zeros(n_items + 1, bool)
    trained[train_items] = True
    return np.flatnonzero(~trained[1:]) + 1


def pool_figures(top: np.ndarray, ev: EvalSet, ks: list[int], n_items: int,
                 pool: np.ndarray | None, cold: np.ndarray) -> dict[str, float]:  # fmt: skip
    """The figures reported beside a ranking's metrics: candidate coverage (with a pool) and
    cold recall (when some test click is cold)."""
    out = {} if pool is None else {"candidate_coverage": candidate_coverage(ev, pool, n_items)}
    return out | cold_metrics(top, ev, cold, ks, n_items)


def baseline_tops(counts: np.ndarray, seen: pd.DataFrame | None, ev: EvalSet, k: int,
                  n_items: int, ids: np.ndarray | None, trending_at: int | None,
                  trending_hours: float) -> dict[str, np.ndarray]:  # fmt: skip
    """Top-k of the baselines, ranked over the same items (`ids`: a pool) with the same masks:
    `popularity` (`counts[i]`: item i's positives over train + valid) and, when the test
    period has a start (`trending_at`, temporal splits), `trending` (`seen`: the train + valid
    rows' item and timestamp)."""
    n_ranked = n_items if ids is None else len(ids)
    depth = min(n_ranked, k + ev.max_exclude)
    ranked = {"popularity": popularity_ranking(counts[1:], len(ev.users), depth, ids)}
    if trending_at is not None:
        ranked["trending"] = trending_ranking(seen, trending_at, trending_hours, n_items,
                                              len(ev.users), depth, ids)  # fmt: skip
    return {
        name: top_unseen(lambda rows, d, r=r: r[rows, :d], ev, k, n_items)
        for name, r in ranked.items()
    }


def score_rankings(tops: dict[str, np.ndarray], ev: EvalSet, ks: list[int], n_items: int,
                   pool: np.ndarray | None, cold: np.ndarray) -> dict[str, dict]:  # fmt: skip
    """metrics.json: per ranking, the metrics (every test click in the denominator) and the
    pool figures beside them."""
    return {
        name: ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)
        | pool_figures(top, ev, ks, n_items, pool, cold)
        for name, top in tops.items()
    }


def with_item_prior(u: np.ndarray, v: np.ndarray, log_prior: np.ndarray, weight: float,
                    logit_scale: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """User and item vectors with one more column each, so that one inner product ranks by
    logit + weight * log_prior: users get 1, items weight * log_prior / logit_scale (the
    logit is logit_scale * u.v). An inner-product index over the items then applies the
    prior without knowing of it."""
    ones = np.ones((len(u), 1), np.float32)
    bias = (weight * np.asarray(log_prior, np.float64) / logit_scale).astype(np.float32)
    return np.hstack([u, ones]), np.hstack([v, bias[:, None]])


def valid_pool(prep_dir: Path, prior_weight: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validation's candidate pool and weighted freshness prior, as preprocess wrote them for
    the validation period (None when the data set has none), so early stopping ranks what the
    test ranks."""
    pool_path, prior_path = (
        prep_dir / FILES.array("valid_candidates"),
        prep_dir / FILES.array("valid_item_log_prior"),
    )
    pool = np.load(pool_path) if pool_path.exists() else None
    prior = (
        prior_weight * np.load(prior_path) if prior_path.exists() and prior_weight > 0 else None
    )
    return pool, prior


def unknown_cold_ids(items: dict, counts: np.ndarray) -> dict:
    """The item feature tensors with the id of every item that is no training positive
    (`counts`: training positives per item id, item_counts) set to 0 (unknown): such an id's
    embedding never trained, so the tower ranks it by content, as `train.item_id_dropout`
    taught it to."""
    ids = items["item"].clone()
    ids[torch.from_numpy(counts[: len(ids)] == 0)] = 0
    return {**items, "item": ids}


def item_counts(batches: Iterable[pd.DataFrame], n_items: int) -> np.ndarray:
    """Rows per item id (index 0..n_items) over frames with an `item` column (a split read in
    batches: artifacts.iter_split)."""
    counts = np.zeros(n_items + 1, np.int64)
    for batch in batches:
        counts += np.bincount(batch["item"].to_numpy(), minlength=n_items + 1)
    return counts
