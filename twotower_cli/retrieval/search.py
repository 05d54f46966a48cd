"""Nearest-neighbour search: faiss indexes (`twotower index`) and the evaluation protocol
(search, drop each user's training items, score the rest) shared by `evaluate` and training's
validation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from twotower_cli.core.errors import ConfigError, TwoTowerError
from twotower_cli.core.keys import find, pair_keys, row_keys, sorted_unique
from twotower_cli.core.progress import bar
from twotower_cli.retrieval.metrics import drop_excluded, ranking_metrics


def empty_index(factory: str, dim: int):
    """An untrained, empty inner-product faiss index; ConfigError naming `index.factory` when
    faiss cannot build that string for `dim`-dimensional vectors. Cheap, so `train` calls it
    before training, not only `index` after it."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(
            f"index.factory: {factory!r} is not a faiss factory string for {dim}-d vectors"
        ) from err


def build_index(items: np.ndarray, factory: str, nprobe: int = 16, ef_search: int = 128):
    """A faiss index over item vectors (rows = item ids 1..n in order), inner-product metric."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    index = empty_index(factory, items.shape[1])
    try:
        if not index.is_trained:  # IVF: k-means over the items needs at least one per list
            index.train(items)
        index.add(items)
    except RuntimeError as err:
        why = str(err).strip().splitlines()[-1].rpartition("failed: ")[2][:160]
        raise TwoTowerError(f"index.factory: {factory!r} cannot be built over {len(items)} item "
                            f"vectors ({why}); pick a smaller one") from None  # fmt: skip
    set_search_params(index, nprobe, ef_search)
    return index


def read_index(path: Path, nprobe: int, ef_search: int):
    """A faiss index file, or a one-line error naming it (faiss aborts on some bad files)."""
    try:
        idx = faiss.read_index(str(path))
    except RuntimeError as err:
        raise TwoTowerError(f"{path}: unreadable faiss index ({str(err).splitlines()[0][:120]});"
                            " rerun `twotower index`") from None  # fmt: skip
    set_search_params(idx, nprobe, ef_search)
    return idx


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
    # optional: the item ids that may be ranked (a candidate pool; None = all) and a log prior
    # per item id added to the logits (pools.with_item_prior); the truth is never restricted
    pool: np.ndarray | None = None
    item_log_prior: np.ndarray | None = None

    @classmethod
    def build(cls, held_out: pd.DataFrame, seen: pd.DataFrame | Iterable[pd.DataFrame],
              n_items: int, users: np.ndarray | None = None) -> EvalSet:  # fmt: skip
        """Held-out (user, item) rows and the seen rows to exclude: a frame, or frames in
        batches (artifacts.iter_seen), of which only the evaluated users' keys are kept.
        `users` (sorted): evaluate only those of the held-out users (sample_users)."""
        h_users, h_items = held_out["user"].to_numpy(), held_out["item"].to_numpy()
        if users is None:
            users = sorted_unique(h_users)
        h_rows, kept = find(users, h_users)
        truth = row_keys(h_rows[kept], h_items[kept], n_items)
        n_truth = np.bincount(truth // (n_items + 1), minlength=len(users))
        parts = []
        for batch in [seen] if isinstance(seen, pd.DataFrame) else seen:
            rows, found = find(users, batch["user"].to_numpy())
            parts.append(pair_keys(rows[found], batch["item"].to_numpy()[found], n_items))
        exclude = sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        per_user = np.bincount(exclude // (n_items + 1), minlength=len(users))
        return cls(users, truth, n_truth, exclude, int(per_user.max(initial=0)))


def sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of `max_users` of the sorted `users`, sorted (0: all)."""
    if not max_users or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))


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


# ids/scores held at once while evaluating (elements): bounds memory on large catalogues
CHUNK_ELEMS = 1 << 24


def exact_vectors(index) -> np.ndarray | None:
    """The stored item vectors of an exact inner-product index (a zero-copy view), else None."""
    if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
    return flat.reshape(index.ntotal, index.d)


def top_unseen_rows(sc: np.ndarray, exclude: np.ndarray, s: int, n_items: int,
                    ids: np.ndarray | None, k: int) -> np.ndarray:  # fmt: skip
    """Top-k item ids of score rows s.. (a chunk of users x items 1..n, float32, written in
    place): each row's `exclude` keys (sorted user_row * (n_items + 1) + item) set to -inf
    first, the ranking restricted to `ids` when given; -1 pads (EASE's and item-KNN's chunks)."""
    width = n_items + 1
    lo, hi = np.searchsorted(exclude, [s * width, (s + len(sc)) * width])
    keys = exclude[lo:hi]
    sc[keys // width - s, keys % width - 1] = -np.inf
    if ids is not None:
        sc = np.ascontiguousarray(sc[:, np.asarray(ids) - 1])
    idx = top_k_columns(sc, k)
    picked = idx + 1 if ids is None else np.asarray(ids)[idx.clip(min=0)]
    return np.where(idx >= 0, picked, -1)


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """[n, m] float32 scores -> [n, k] column indices of each row's k largest, best first;
    -1 where a row has fewer than k finite scores (-inf is never taken).

    faiss's k-selection heaps (what its exhaustive search runs after each BLAS block): one
    comparison per score against the row's current k-th best, rows in parallel; about twice
    as fast as torch.topk on this machine (docs/bench.md)."""
    n = len(scores)
    values = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()  # a min-heap keeps the largest values
    heaps.nh, heaps.k = n, k
    heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(ids)
    heaps.heapify()
    heaps.addn(scores.shape[1], faiss.swig_ptr(scores), 0, 0, n)
    heaps.reorder()
    return ids


def search_chunk_rows(n_items: int) -> int:
    """Users per chunk of the exact search: 64..1024, fewer starves the matrix multiply, more
    only costs memory (the benchmark times torch.mm over the same chunks)."""
    return int(np.clip((4 * CHUNK_ELEMS) // max(n_items, 1), 64, 1024))


def exact_top_unseen(
    items: np.ndarray, u: np.ndarray, exclude: np.ndarray, k: int, n_items: int
) -> np.ndarray:
    """Exact top-k item ids per user row, each user's excluded items masked out *before* the
    top-k (so the search never goes deeper than k): scores by torch.mm in chunks of users,
    excluded pairs set to -inf, a top-k per row (top_k_columns). Rows with fewer than k unseen
    items pad with -1."""
    V = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    U = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))
    n, width = len(V), n_items + 1
    out = np.full((len(U), k), -1, dtype=np.int64)
    k_eff = min(k, n)
    if k_eff == 0 or len(U) == 0:
        return out
    chunk = search_chunk_rows(n)
    scores = torch.empty(min(chunk, len(U)), n)
    rows = bar(total=len(U), desc="search", unit="user", leave=False, mininterval=1.0)
    with torch.no_grad(), rows:
        for s in range(0, len(U), chunk):
            e = min(s + chunk, len(U))
            sc = scores[: e - s]
            torch.mm(U[s:e], V.T, out=sc)
            lo, hi = np.searchsorted(exclude, [s * width, e * width])
            keys = exclude[lo:hi]
            sc[torch.from_numpy(keys // width - s), torch.from_numpy(keys % width - 1)] = -np.inf
            idx = top_k_columns(sc.numpy(), k_eff)
            out[s:e, :k_eff] = np.where(idx >= 0, idx + 1, -1)
            rows.update(e - s)
    return out


def top_unseen(fetch, ev: EvalSet, k: int, n_items: int) -> np.ndarray:
    """The first k unseen items per user from rankings fetched chunk by chunk.

    `fetch(rows, depth)` returns the top-`depth` ids of those user rows. Users are taken in
    order of how many items they must skip, and each chunk is searched only as deep as its
    heaviest user needs (k + that user's seen items), with chunk * depth <= CHUNK_ELEMS: one
    heavy user no longer makes every user's search deep (and the memory users * depth).
    """
    width = n_items + 1
    per_user = np.bincount(ev.exclude // width, minlength=len(ev.users))
    order = np.argsort(per_user, kind="stable")
    out = np.full((len(ev.users), k), -1, dtype=np.int64)
    s = 0
    progress = bar(total=len(order), desc="search", unit="user", leave=False, mininterval=1.0)
    while s < len(order):
        e = min(len(order), s + 4096)
        depth = min(n_items, k + int(per_user[order[e - 1]]))
        while e - s > 1 and (e - s) * depth > CHUNK_ELEMS:
            e = s + max(1, CHUNK_ELEMS // depth)
            depth = min(n_items, k + int(per_user[order[e - 1]]))
        rows = order[s:e]
        out[rows] = drop_excluded(fetch(rows, depth), ev.exclude, n_items, k, rows=rows)
        progress.update(e - s)
        s = e
    progress.close()
    return out


def evaluate_ranked(ranked: np.ndarray, ev: EvalSet, ks: list[int], n_items: int) -> dict:
    """Metrics of precomputed rankings (rows = ev.users), deep enough to skip seen items."""
    top = top_unseen(lambda rows, depth: ranked[rows, :depth], ev, max(ks), n_items)
    return ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)


def subset_ids(ids: np.ndarray, n_items: int) -> np.ndarray | None:
    """An index's row -> item id map for index_top_unseen: None when the rows are the whole
    catalogue in order (ids 1..n_items), which lets an exact index take the masked exact
    search, else `ids`."""
    whole = len(ids) == n_items and np.array_equal(ids, np.arange(1, n_items + 1))
    return None if whole else ids


def index_top_unseen(
    index, u: np.ndarray, ev: EvalSet, k: int, n_items: int, ids: np.ndarray | None = None
) -> np.ndarray:
    """[users, k] item ids: an index's top-k per user (rows = ev.users) with each user's seen
    items removed (-1 pads).

    Exact indexes over the whole catalogue mask seen items before a top-k (exact_top_unseen);
    approximate ones, and indexes over a subset (`ids`: the item id of each index row, e.g.
    evaluation candidates), search per chunk only as deep as that chunk's users need
    (top_unseen).
    """
    items = exact_vectors(index) if ids is None else None
    if items is not None:
        return exact_top_unseen(items, u, ev.exclude, k, n_items)
    return top_unseen(
        lambda rows, depth: search(index, u[rows], min(depth, index.ntotal), ids=ids),
        ev, k, n_items,
    )  # fmt: skip


def evaluate_index(
    index, u: np.ndarray, ev: EvalSet, ks: list[int], n_items: int, ids: np.ndarray | None = None
) -> dict:
    """Metrics of an index's rankings with each user's seen items removed (index_top_unseen)."""
    top = index_top_unseen(index, u, ev, max(ks), n_items, ids)
    return ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)


def popularity_ranking(
    counts: np.ndarray, n_users: int, depth: int, ids: np.ndarray | None = None
) -> np.ndarray:
    """The same most-popular-first list for every user (ties broken by item id). counts[i] is
    item i + 1's count; `ids` restricts the list to those item ids (evaluation candidates)."""
    ids = np.arange(1, len(counts) + 1) if ids is None else np.asarray(ids)
    order = ids[np.lexsort((ids, -counts[ids - 1]))[:depth]]
    return np.broadcast_to(order, (n_users, len(order)))
