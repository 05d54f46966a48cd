"""Cosine item-KNN, a classical baseline `twotower evaluate` scores beside the model
(`eval.baselines: [..., itemknn]`; Sarwar et al., WWW 2001; Deshpande & Karypis, TOIS 2004).

With X the binary user x item matrix (scipy sparse), the similarity of items i and j is the
cosine of their columns, S_ij = (X^T X)_ij / sqrt(n_i n_j) (n_i = users of item i), 0 on the
diagonal; each row i keeps its `k` largest entries (item i's neighbourhood). A user's scores
are x_u S: the summed similarity of each item to the items the user has. `k` is picked on
validation (fit on train, rank validation with train masked), then S is refit on
train + validation and scored on test by the model's protocol, as EASE is (baselines.py).
Everything stays sparse: memory is the co-occurrence pairs, not items x items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_cli.core.progress import bar
from twotower_cli.retrieval.metrics import ranking_metrics
from twotower_cli.retrieval.search import EvalSet, top_unseen_rows

# the neighbourhood sizes tried on validation unless eval.knn_neighbours names others
DEFAULT_NEIGHBOURS = (10, 20, 50, 100, 200, 500, 1000)


def user_matrix(pairs: pd.DataFrame, users: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The binary [len(users), n_items] matrix of `pairs` (column j = item j + 1), rows in the
    order of the sorted `users`; repeats count once, pairs of other users are dropped."""
    u, i = pairs["user"].to_numpy(), pairs["item"].to_numpy()
    keep = np.isin(u, users)
    rows = np.searchsorted(users, u[keep])
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, i[keep] - 1)),
                      shape=(len(users), n_items))  # fmt: skip
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


@dataclass
class Neighbours:
    """Every nonzero cosine similarity of two distinct items, each row's entries best first
    (ties by column): entry e is S[row[e], col[e]] = val[e], the rank[e]-th of its row."""

    row: np.ndarray
    col: np.ndarray
    val: np.ndarray
    rank: np.ndarray
    n_items: int

    def prune(self, k: int) -> sp.csr_matrix:
        """The similarity matrix with each row cut to its `k` largest entries."""
        keep = self.rank < k
        n = self.n_items
        return sp.csr_matrix((self.val[keep], (self.row[keep], self.col[keep])), shape=(n, n))


def cosine_neighbours(pairs: pd.DataFrame, n_items: int) -> Neighbours:
    """The items' cosine similarities from the (user, item) `pairs`, ranked per row."""
    X = user_matrix(pairs, np.unique(pairs["user"].to_numpy()), n_items)
    G = (X.T @ X).tocsr()
    norm = np.sqrt(G.diagonal())
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    S = (sp.diags(inv) @ G @ sp.diags(inv)).tocoo()
    off = S.row != S.col
    row, col, val = S.row[off], S.col[off], S.data[off].astype(np.float32)
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(n_items))[row]
    return Neighbours(row, col, val, rank, n_items)


def knn_top_unseen(S: sp.csr_matrix, inputs: pd.DataFrame, ev: EvalSet, k: int, n_items: int,
                   ids: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:  # fmt: skip
    """Top-k unseen item ids per evaluation user by x_u S (x_u: the user's rows of `inputs`);
    ev.exclude is masked; `ids` restricts the ranking to those item ids. -1 pads short rows."""
    X = user_matrix(inputs, ev.users, n_items)
    k_eff = min(k, n_items if ids is None else len(ids))
    out = np.full((len(ev.users), k), -1, dtype=np.int64)
    progress = bar(total=len(ev.users), desc="itemknn", unit="user", leave=False, mininterval=1.0)
    with progress:
        for s in range(0, len(ev.users), chunk):
            e = min(s + chunk, len(ev.users))
            sc = (X[s:e] @ S).toarray().astype(np.float32)
            out[s:e, :k_eff] = top_unseen_rows(sc, ev.exclude, s, n_items, ids, k_eff)
            progress.update(e - s)
    return out


def knn_select(train: pd.DataFrame, valid: pd.DataFrame, n_items: int, neighbours: list[int],
               k: int, mask_seen: bool = True) -> tuple[int, dict[int, float]]:  # fmt: skip
    """The neighbourhood size with the best validation Recall@k (fit on train, train items
    masked unless not `mask_seen`, as EASE's lambda), and every size's score; ties go to the
    smaller neighbourhood."""
    ranked = cosine_neighbours(train, n_items)
    ev = EvalSet.build(valid, train if mask_seen else [], n_items)
    scores = {}
    for size in sorted(neighbours):
        top = knn_top_unseen(ranked.prune(size), train, ev, k, n_items)
        scores[int(size)] = ranking_metrics(top, ev.truth, ev.n_truth, [k], n_items)[f"recall@{k}"]
    return max(scores, key=scores.get), scores


def knn_metrics(train: pd.DataFrame, valid: pd.DataFrame, ev: EvalSet, ks: list[int],
                n_items: int, neighbours: list[int], select_k: int,
                ids: np.ndarray | None = None, mask_seen: bool = True,
                refit: bool = True) -> dict:  # fmt: skip
    """Item-KNN on the test users `ev`: the neighbourhood size picked on validation, S refit
    on train + validation (`refit` False: S of train only, as EASE under the protocol's
    baselines_fit), test metrics plus the choice."""
    size, scores = knn_select(train, valid, n_items, neighbours, select_k, mask_seen)
    seen = pd.concat([train, valid]) if refit else train
    S = cosine_neighbours(seen, n_items).prune(size)
    top = knn_top_unseen(S, seen, ev, max(ks), n_items, ids)
    metrics = ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)
    return {**metrics, "neighbours": size, f"valid_recall@{select_k}": scores}
