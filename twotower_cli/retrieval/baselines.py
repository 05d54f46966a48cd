"""Classical baselines that `twotower evaluate` scores beside the model (`eval.baselines`):
popularity, EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) and
cosine item-KNN (itemknn.py).

EASE learns an item-item weight matrix in closed form, B = I - P diag(1 / diag P) with
P = (X^T X + lambda I)^-1 (so diag B = 0), and scores a user's items as x_u B. Its lambda is
picked on the validation split (fit on train, rank validation with train masked), then B is
refit on train + validation and scored on test by the same protocol as the model: the same
users, masks, candidate ids and metrics. On a catalogue above `eval.ease_max_items` EASE is
fitted on the most popular `ease_max_items` items only (the rest are never recommended) and its
metrics say so (`items`, `of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from twotower_cli.core.errors import ConfigError
from twotower_cli.core.progress import bar
from twotower_cli.retrieval.itemknn import DEFAULT_NEIGHBOURS, knn_metrics
from twotower_cli.retrieval.metrics import ranking_metrics
from twotower_cli.retrieval.search import (
    EvalSet,
    evaluate_ranked,
    popularity_ranking,
    top_unseen_rows,
)

# the lambdas tried on validation unless eval.ease_lambdas names others
DEFAULT_LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


@dataclass
class BaselineSettings:
    """`eval.*` keys the baselines read."""

    names: list[str] = field(default_factory=lambda: ["popularity", "ease"])
    ease_max_items: int = 20000
    ease_lambdas: list[float] = field(default_factory=lambda: list(DEFAULT_LAMBDAS))
    select_k: int = 20  # validation Recall@k that picks lambda (train.early_stop_k)
    knn_neighbours: list[int] = field(default_factory=lambda: list(DEFAULT_NEIGHBOURS))
    # mask each user's seen items (train; train+valid at test); False: nothing masked, every
    # ranking (model and baselines) may return them (protocol=deepmatch)
    mask_seen: bool = True
    # popularity counts and EASE's final fit on train + validation (False: train only, as
    # RecBole's trainer does: protocol=recbole)
    refit: bool = True


# the baselines eval.baselines may name
NAMES = ("popularity", "ease", "itemknn")


def _dtype(n_items: int) -> torch.dtype:
    # float64 keeps the hand-checked closed form exact on small catalogues; float32 halves the
    # memory of the n x n matrices on large ones
    return torch.float64 if n_items <= 4096 else torch.float32


def ease_peak_bytes(n_items: int) -> int:
    """EASE's peak memory: three items x items matrices at once (the Gram matrix, and the
    shifted copy and its Cholesky factor, or the factor and the inverse: ease_weights)."""
    return 3 * n_items * n_items * _dtype(n_items).itemsize


def _user_rows(pairs: pd.DataFrame, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) of each interaction of `users` (sorted ids), row = position in `users`,
    sorted by row so a chunk of rows is a contiguous slice."""
    u = pairs["user"].to_numpy()
    keep = np.isin(u, users)
    rows = np.searchsorted(users, u[keep])
    order = np.argsort(rows, kind="stable")
    return rows[order], pairs["item"].to_numpy()[keep][order]


def _dense_rows(rows: np.ndarray, items: np.ndarray, s: int, e: int, n_items: int, dtype):
    """Rows s..e-1 of the binary user x item matrix as a dense tensor (column j = item j+1)."""
    lo, hi = np.searchsorted(rows, [s, e])
    x = torch.zeros(e - s, n_items, dtype=dtype)
    x[torch.from_numpy(rows[lo:hi] - s), torch.from_numpy(items[lo:hi] - 1)] = 1.0
    return x


def gram(pairs: pd.DataFrame, n_items: int, chunk: int = 2048) -> torch.Tensor:
    """X^T X of the binary user x item matrix of `pairs` (user, item; repeats count once)."""
    users = np.unique(pairs["user"].to_numpy())
    rows, items = _user_rows(pairs, users)
    dtype = _dtype(n_items)
    G = torch.zeros(n_items, n_items, dtype=dtype)
    for s in range(0, len(users), chunk):
        x = _dense_rows(rows, items, s, min(s + chunk, len(users)), n_items, dtype)
        G.addmm_(x.T, x)
    return G


def ease_weights(G: torch.Tensor, lam: float) -> torch.Tensor:
    """EASE's B from the Gram matrix G = X^T X: P = (G + lam I)^-1, B = I - P diag(1/diag P),
    i.e. B_ij = -P_ij / P_jj off the diagonal and 0 on it (Steck 2019, eq. 8)."""
    A = G.clone()
    A.diagonal().add_(lam)
    L = torch.linalg.cholesky(A)
    del A  # at most three n x n matrices alive with G: ease_peak_bytes
    B = torch.cholesky_inverse(L)
    del L
    B.div_(-B.diagonal().clone()[None, :])  # B is P until here: B_ij = -P_ij / P_jj
    B.diagonal().zero_()
    return B


def ease_top_unseen(B: torch.Tensor, inputs: pd.DataFrame, ev: EvalSet, k: int, n_items: int,
                    ids: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:  # fmt: skip
    """Top-k unseen item ids per evaluation user by EASE's scores x_u B, where x_u are the
    user's rows of `inputs`; ev.exclude is masked before the top-k; `ids` restricts the
    ranking to those item ids (evaluation candidates). -1 pads short rows."""
    rows, items = _user_rows(inputs, ev.users)
    k_eff = min(k, n_items if ids is None else len(ids))
    out = np.full((len(ev.users), k), -1, dtype=np.int64)
    progress = bar(total=len(ev.users), desc="ease", unit="user", leave=False, mininterval=1.0)
    with torch.no_grad(), progress:
        for s in range(0, len(ev.users), chunk):
            e = min(s + chunk, len(ev.users))
            sc = (_dense_rows(rows, items, s, e, n_items, B.dtype) @ B).float().numpy()
            out[s:e, :k_eff] = top_unseen_rows(sc, ev.exclude, s, n_items, ids, k_eff)
            progress.update(e - s)
    return out


def ease_select(train: pd.DataFrame, valid: pd.DataFrame, n_items: int, lambdas: list[float],
                k: int, mask_seen: bool = True) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The lambda with the best validation Recall@k (fit on train, train items masked unless
    not `mask_seen`), and every lambda's score."""
    G = gram(train, n_items)
    ev = EvalSet.build(valid, train if mask_seen else [], n_items)
    scores = {}
    for lam in lambdas:
        top = ease_top_unseen(ease_weights(G, lam), train, ev, k, n_items)
        scores[float(lam)] = ranking_metrics(top, ev.truth, ev.n_truth, [k], n_items)[
            f"recall@{k}"
        ]
    return max(scores, key=scores.get), scores


def ease_metrics(train: pd.DataFrame, valid: pd.DataFrame, ev: EvalSet, ks: list[int],
                 n_items: int, lambdas: list[float], select_k: int,
                 ids: np.ndarray | None = None, mask_seen: bool = True,
                 refit: bool = True) -> dict:  # fmt: skip
    """EASE on the test users `ev`: lambda picked on validation, B refit on train + validation
    (what evaluation masks as seen and what popularity counts; `refit` False: B of train only,
    scoring the train rows), test metrics plus the choice."""
    lam, scores = ease_select(train, valid, n_items, lambdas, select_k, mask_seen)
    seen = pd.concat([train, valid]) if refit else train
    top = ease_top_unseen(ease_weights(gram(seen, n_items), lam), seen, ev, max(ks), n_items, ids)
    metrics = ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)
    return {**metrics, "lambda": lam, f"valid_recall@{select_k}": scores}


def most_popular(pairs: pd.DataFrame, n_items: int, m: int) -> np.ndarray:
    """The `m` item ids with the most (user, item) rows in `pairs`, ties by id, sorted."""
    counts = np.bincount(pairs["item"].to_numpy(), minlength=n_items + 1)[1:]
    return np.sort(np.lexsort((np.arange(n_items), -counts))[:m] + 1)


def _restricted(pairs: pd.DataFrame, keep: np.ndarray, n_items: int) -> pd.DataFrame:
    """`pairs` on the items `keep` only, renumbered 1..len(keep) in their order."""
    new = np.zeros(n_items + 1, dtype=np.int64)
    new[keep] = np.arange(1, len(keep) + 1)
    item = new[pairs["item"].to_numpy()]
    return pd.DataFrame({"user": pairs["user"].to_numpy()[item > 0], "item": item[item > 0]})


def ease_on_popular(train: pd.DataFrame, valid: pd.DataFrame, ev: EvalSet, ks: list[int],
                    n_items: int, settings: BaselineSettings,
                    ids: np.ndarray | None = None) -> dict:  # fmt: skip
    """EASE fitted on the `settings.ease_max_items` most popular items only (on the pairs it
    is fitted on: train for lambda's choice, train + validation for the refit); the others are
    never recommended, every test positive still counts. Metrics as ease_metrics' plus
    `items` (fitted) and `of` (the catalogue)."""
    m = settings.ease_max_items
    top_train = most_popular(train, n_items, m)
    lam, scores = ease_select(_restricted(train, top_train, n_items),
                              _restricted(valid, top_train, n_items), m, settings.ease_lambdas,
                              settings.select_k, settings.mask_seen)  # fmt: skip
    seen = pd.concat([train, valid]) if settings.refit else train
    keep = most_popular(seen, n_items, m)
    new = np.zeros(n_items + 1, dtype=np.int64)
    new[keep] = np.arange(1, m + 1)
    width = n_items + 1
    rows, items = ev.exclude // width, new[ev.exclude % width]
    sub = replace(ev, exclude=rows[items > 0] * (m + 1) + items[items > 0])
    sub_ids = None if ids is None else new[np.asarray(ids)][new[np.asarray(ids)] > 0]
    seen_sub = _restricted(seen, keep, n_items)
    top = ease_top_unseen(ease_weights(gram(seen_sub, m), lam), seen_sub, sub, max(ks), m, sub_ids)
    top = np.where(top > 0, keep[top - 1], -1)
    metrics = ranking_metrics(top, ev.truth, ev.n_truth, ks, n_items)
    return {**metrics, "lambda": lam, f"valid_recall@{settings.select_k}": scores, "items": m,
            "of": n_items}  # fmt: skip


def baseline_metrics(settings: BaselineSettings, train: pd.DataFrame, valid: pd.DataFrame,
                     ev: EvalSet, ks: list[int], n_items: int,
                     ids: np.ndarray | None) -> tuple[dict, dict]:  # fmt: skip
    """({name: metrics} of each ranked baseline, {name: reason} of each one skipped; EASE is
    never skipped now: above ease_max_items it is fitted on the most popular items)."""
    unknown = sorted(set(settings.names) - set(NAMES))
    if unknown:
        raise ConfigError(f"eval.baselines: unknown {unknown}; choose from {', '.join(NAMES)}")
    out = {}
    if "popularity" in settings.names:
        seen = pd.concat([train, valid]) if settings.refit else train
        counts = np.bincount(seen["item"].to_numpy(), minlength=n_items + 1)[1:]
        n_cand = n_items if ids is None else len(ids)
        depth = min(n_cand, max(ks) + ev.max_exclude)
        ranked = popularity_ranking(counts, len(ev.users), depth, ids)
        out["popularity"] = evaluate_ranked(ranked, ev, ks, n_items)
    if "ease" in settings.names and n_items > settings.ease_max_items:
        print(
            f"evaluate: EASE on the {settings.ease_max_items} most popular of {n_items} items"
            f" (eval.ease_max_items; all {n_items} would hold three {n_items} x {n_items} "
            f"{str(_dtype(n_items)).removeprefix('torch.')} matrices,"
            f" {ease_peak_bytes(n_items) / 2**30:.1f} GiB); the others are never recommended"
        )
        out["ease"] = ease_on_popular(train, valid, ev, ks, n_items, settings, ids)
    elif "ease" in settings.names:
        out["ease"] = ease_metrics(train, valid, ev, ks, n_items, settings.ease_lambdas,
                                   settings.select_k, ids, settings.mask_seen,
                                   settings.refit)  # fmt: skip
    if "itemknn" in settings.names:
        out["itemknn"] = knn_metrics(train, valid, ev, ks, n_items, settings.knn_neighbours,
                                     settings.select_k, ids, settings.mask_seen,
                                     settings.refit)  # fmt: skip
    return out, {}
