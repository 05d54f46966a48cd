"""Top-k items for parsed requests against a loaded bundle (`twotower serve`): user vectors
from the tower, searched in the faiss index, exclusions dropped by the rule `evaluate` uses
(metrics.drop_excluded)."""

from __future__ import annotations

import numpy as np

from twotower_cli.core.keys import pair_keys, sorted_unique
from twotower_cli.retrieval.metrics import drop_excluded
from twotower_cli.serve.bundle import Bundle
from twotower_cli.serve.encoding import RequestError, UserQuery, code_of


def _top(D: np.ndarray, I: np.ndarray, exclude_keys: np.ndarray, n_items: int, k: int):
    """(items, scores, keep): the first k results per row that are neither missing (-1) nor
    excluded for that row (sorted keys = row * (n_items + 1) + item), in index order, with the
    index's score of each; `keep` is False where a row has fewer than k."""
    ranked = np.where(I >= 0, I + 1, -1)
    top = drop_excluded(ranked, exclude_keys, n_items, k)
    keep = top > 0
    # each kept item's score: find its position in its row of the search result (items are
    # unique within a row; shifting by one gives the -1 padding a key of its own)
    rows = np.arange(len(I))[:, None] * (n_items + 2)
    keys = (rows + ranked + 1).ravel()
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], (rows + top + 1).ravel()).clip(max=len(keys) - 1)
    scores = D.ravel()[order[pos]].reshape(top.shape)
    return top, scores, keep


def recommend(bundle: Bundle, queries: list[UserQuery], k: int | list[int]) -> list[list[dict]]:
    """Top-k items per query (k: one for all or one per query): user vectors from the tower,
    searched in the index, each user's seen items (train+valid, if asked) and requested
    exclusions dropped."""
    ks = [k] * len(queries) if isinstance(k, int) else k
    k = max(ks)
    enc = bundle.encoder
    u = bundle.user_vectors(enc.encode(queries, bundle.seen))
    ptr, seen_items = bundle.seen
    excluded = []
    for q in queries:
        dense = enc.dense_user(q.user)
        items = enc.dense_items(list(q.exclude)) if q.exclude else np.zeros(0, np.int64)
        if q.exclude_seen and dense:
            items = np.concatenate([items, seen_items[ptr[dense] : ptr[dense + 1]]])
        excluded.append(items)
    n = bundle.n_items
    # deep enough that k items survive the exclusions: the rule evaluate uses
    depth = min(n, k + max(len(e) for e in excluded))
    D, I = bundle.index.search(u, depth)
    if len(queries) == 1:  # a lone request: a mask over the catalogue, no pair keys to sort
        items = I[0] + 1  # -1 (missing) -> 0, which no mask marks: `I >= 0` drops it
        mask = np.zeros(n + 1, dtype=bool)
        mask[excluded[0]] = True
        keep = (I[0] >= 0) & ~mask[items]
        return [_items(bundle, items[keep][:k], D[0][keep][:k])]
    rows = np.repeat(np.arange(len(excluded)), [len(e) for e in excluded])
    keys = sorted_unique(pair_keys(rows, np.concatenate(excluded), n))
    items, scores, keep = _top(D, I, keys, n, k)
    return [_items(bundle, r[m][:kq], d[m][:kq])
            for r, d, m, kq in zip(items, scores, keep, ks, strict=True)]  # fmt: skip


def _items(bundle: Bundle, dense: np.ndarray, scores: np.ndarray) -> list[dict]:
    raw = bundle.item_raw[dense].tolist()
    return [{"item_id": i, "score": s} for i, s in zip(raw, scores.tolist(), strict=True)]


def similar_items(bundle: Bundle, raw_item: str | int, k: int) -> list[dict]:
    """The k nearest items to one item's vector (itself left out)."""
    dense = code_of(bundle.encoder.item_ids, raw_item)
    if not dense:
        raise RequestError("item_id", f"unknown item {raw_item!r}", status=404)
    q = bundle.item_vectors[dense - 1 : dense]
    D, I = bundle.index.search(q, min(bundle.n_items, k + 1))
    key = pair_keys(np.zeros(1), np.array([dense]), bundle.n_items)
    items, scores, keep = _top(D, I, key, bundle.n_items, k)
    return _items(bundle, items[0][keep[0]], scores[0][keep[0]])
