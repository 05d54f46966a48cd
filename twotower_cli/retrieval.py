"""Nearest-neighbour search: faiss indexes (`twotower index`) and the evaluation protocol
(search, drop each user's training items, score the rest) shared by `evaluate` and training's
validation."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from twotower_cli.metrics import drop_excluded, ranking_metrics, row_keys


def build_index(items: np.ndarray, factory: str, nprobe: int = 16, ef_search: int = 128):
    """A faiss index over item vectors (rows = item ids 1..n in order), inner-product metric."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    try:
        index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"index.factory: {factory!r} is not a faiss factory string") from err
    if not index.is_trained:
        index.train(items)
    index.add(items)
    set_search_params(index, nprobe, ef_search)
    return index


def set_search_params(index, nprobe: int, ef_search: int) -> None:
    params = faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        try:
            params.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # this index type has no such knob


@dataclass
class EvalSet:
    """Users to evaluate (ids), their held-out items and the items to exclude from rankings."""

    users: np.ndarray
    truth: np.ndarray
    n_truth: np.ndarray
    exclude: np.ndarray
    max_exclude: int

    @classmethod
    def build(cls, held_out: pd.DataFrame, seen: pd.DataFrame, n_items: int) -> EvalSet:
        users = np.unique(held_out["user"].to_numpy())
        rows_of = lambda u: np.searchsorted(users, u)  # noqa: E731
        h_rows = rows_of(held_out["user"].to_numpy())
        truth = row_keys(h_rows, held_out["item"].to_numpy(), n_items)
        n_truth = np.bincount(truth // (n_items + 1), minlength=len(users))
        seen = seen[np.isin(seen["user"].to_numpy(), users)]
        exclude = row_keys(rows_of(seen["user"].to_numpy()), seen["item"].to_numpy(), n_items)
        per_user = np.bincount(exclude // (n_items + 1), minlength=len(users))
        return cls(users, truth, n_truth, exclude, int(per_user.max(initial=0)))


def search(
    index, u: np.ndarray, depth: int, chunk: int = 4096, ids: np.ndarray | None = None
) -> np.ndarray:
    """Top-`depth` item ids per query row (faiss row i = item id ids[i], default i + 1; -1 =
    none). `ids` lets an index hold a subset of the catalogue (evaluation candidates)."""
    out = np.empty((len(u), depth), dtype=np.int64)
    for start in range(0, len(u), chunk):
        _, I = index.search(np.ascontiguousarray(u[start : start + chunk], np.float32), depth)
        item = I + 1 if ids is None else ids[I.clip(min=0)]
        out[start : start + chunk] = np.where(I >= 0, item, -1)
    return out


def evaluate_ranked(ranked: np.ndarray, ev: EvalSet, ks: list[int], n_items: int) -> dict:
    top = drop_excluded(ranked, ev.exclude, n_items, max(ks))
    return ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)


def evaluate_index(
    index, u: np.ndarray, ev: EvalSet, ks: list[int], n_items: int, ids: np.ndarray | None = None
) -> dict:
    """Search deep enough that max(ks) items survive dropping each user's seen items; `ids`:
    the item id of each index row when the index holds only candidates."""
    depth = min(index.ntotal, max(ks) + ev.max_exclude)
    return evaluate_ranked(search(index, u, depth, ids=ids), ev, ks, n_items)


def popularity_ranking(
    counts: np.ndarray, n_users: int, depth: int, ids: np.ndarray | None = None
) -> np.ndarray:
    """The same most-popular-first list for every user (ties broken by item id). counts[i] is
    item i + 1's count; `ids` restricts the list to those item ids (evaluation candidates)."""
    ids = np.arange(1, len(counts) + 1) if ids is None else np.asarray(ids)
    order = ids[np.lexsort((ids, -counts[ids - 1]))[:depth]]
    return np.broadcast_to(order, (n_users, len(order)))
