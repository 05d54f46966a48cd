"""Ranking metrics over the whole catalogue, vectorised over users (`twotower evaluate`).

A ranking is an int array [users, depth] of item ids (-1 = no item). `truth` and `exclude` are
sorted pair keys (keys.pair_keys) with the users numbered by row of the ranking.
"""

from __future__ import annotations

import numpy as np

from twotower_cli.core.keys import is_member, pair_keys, sorted_unique


def drop_excluded(
    ranked: np.ndarray, exclude: np.ndarray, n_items: int, k: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """The first k items of each row that are not excluded for that row's user (-1 pads).

    rows: the user row number of each ranking row in `exclude`'s keys (default 0..n-1).
    """
    rows = (np.arange(len(ranked)) if rows is None else np.asarray(rows))[:, None]
    bad = (ranked < 0) | is_member(pair_keys(rows, ranked, n_items), exclude)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(ranked, order, axis=1)
    top[np.take_along_axis(bad, order, axis=1)] = -1
    if top.shape[1] < k:  # a catalogue smaller than k: pad
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
    return top


def ranking_metrics(
    top: np.ndarray, truth: np.ndarray, n_truth: np.ndarray, ks: list[int], n_items: int
) -> dict[str, float]:
    """Recall, Precision, NDCG, HitRate, MRR and catalogue coverage @k, averaged over users
    (RecBole's definitions: Recall = hits / the user's held-out items, MRR = 1 / the rank of
    the first hit within k, 0 without one).

    top: [users, >= max(ks)] ranked item ids; truth: sorted pair keys of the held-out items;
    n_truth: held-out items per user (users with none must be left out by the caller).
    """
    rows = np.arange(len(top))[:, None]
    hits = (top >= 0) & is_member(pair_keys(rows, top, n_items), truth)
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    first = np.where(hits.any(1), hits.argmax(1), top.shape[1])  # 0-based rank of the first hit
    out = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        dcg = (h * discount[:k]).sum(1)
        idcg = ideal[np.minimum(n_truth, k)]
        seen = sorted_unique(top[:, :k])
        out[f"recall@{k}"] = float(np.mean(n_hit / n_truth))
        out[f"precision@{k}"] = float(np.mean(n_hit / k))
        out[f"ndcg@{k}"] = float(np.mean(dcg / idcg))
        out[f"hit_rate@{k}"] = float(np.mean(n_hit > 0))
        out[f"mrr@{k}"] = float(np.mean(np.where(first < k, 1.0 / (first + 1.0), 0.0)))
        out[f"coverage@{k}"] = float((seen >= 0).sum() / n_items)
    return out
