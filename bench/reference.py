"""Reference implementations the benchmark (`make bench`) races twotower against.

They are written the way common PyTorch recommender code is: a per-row `Dataset` returning a
dict of feature tensors fed through the default `DataLoader` collate, and an evaluation loop
that scores, sorts, masks and intersects one user at a time. Deliberately plain, not straw men:
each per-row step uses numpy/torch, only the loop over rows/users is Python.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset


class RowDataset(Dataset):
    """One training example per row: {"user/<field>": tensor, "item/<field>": tensor}."""

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        user_table: dict[str, torch.Tensor],
        item_table: dict[str, torch.Tensor],
    ) -> None:
        self.users, self.items = np.asarray(users), np.asarray(items)
        self.user_table = {n: t.numpy() for n, t in user_table.items()}
        self.item_table = {n: t.numpy() for n, t in item_table.items()}

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        u, v = self.users[i], self.items[i]
        row = {f"user/{n}": torch.as_tensor(t[u]) for n, t in self.user_table.items()}
        row.update({f"item/{n}": torch.as_tensor(t[v]) for n, t in self.item_table.items()})
        return row


def split_batch(batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A collated batch -> (user features, item features) keyed by field name."""
    user = {n[5:]: t for n, t in batch.items() if n.startswith("user/")}
    item = {n[5:]: t for n, t in batch.items() if n.startswith("item/")}
    return user, item


def reference_train(
    model,
    loss_fn,
    dataset: RowDataset,
    batch_size: int,
    steps: int,
    make_optimizers,
    log_q: torch.Tensor | None,
    seed: int = 0,
    device: str = "cpu",
) -> int:
    """`steps` optimiser steps through DataLoader(shuffle=True) with the default collate;
    `make_optimizers(model)` gives the same optimisers the trainer uses; each collated batch
    moves to `device`. Returns the number of examples processed."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
    model.to(device)
    log_q = None if log_q is None else log_q.to(device)
    opts = make_optimizers(model)
    model.train()
    seen = 0
    for step, batch in enumerate(loader):
        if step == steps:
            break
        user, item = split_batch({n: t.to(device) for n, t in batch.items()})
        u, v = model.user_vectors(user), model.item_vectors(item)
        # the same per-batch logQ column as the in-batch sampler's batch_fn: log(B * Q(item))
        lq = None if log_q is None else log_q[item["item"]] + float(np.log(len(item["item"])))
        batch = {"user": user["user"], "item": item["item"]}
        if lq is not None:
            batch["log_q"] = lq
        loss = loss_fn(model.logit_scale, u, v, None, batch)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        seen += len(item["item"])
    model.cpu()
    return seen


def reference_evaluate(
    items: np.ndarray,
    u: np.ndarray,
    users: np.ndarray,
    held_out: pd.DataFrame,
    seen: pd.DataFrame,
    ks: list[int],
    n_items: int,
) -> dict[str, float]:
    """Recall, Precision, NDCG, HitRate, MRR and coverage @k, one user at a time.

    items: [n_items, d] vectors of item ids 1..n; u[row] is the vector of users[row]; a user's
    `seen` items are removed from the ranking, `held_out` items are the truth.
    """
    truth = held_out.groupby("user")["item"].apply(set).to_dict()
    skip = seen.groupby("user")["item"].apply(np.asarray).to_dict()
    empty = np.zeros(0, dtype=np.int64)
    top_k = max(ks)
    sums = {
        f"{m}@{k}": 0.0 for k in ks for m in ("recall", "precision", "ndcg", "hit_rate", "mrr")
    }
    covered: dict[int, set] = {k: set() for k in ks}
    for row, user in enumerate(users):
        scores = items @ u[row]
        ranked = np.argsort(-scores, kind="stable") + 1
        ranked = ranked[~np.isin(ranked, skip.get(user, empty))][:top_k]
        relevant = truth[user]
        for k in ks:
            top = ranked[:k].tolist()
            hits = [i in relevant for i in top]
            n_hit = sum(hits)
            dcg = sum(1.0 / math.log2(pos + 2) for pos, h in enumerate(hits) if h)
            idcg = sum(1.0 / math.log2(pos + 2) for pos in range(min(len(relevant), k)))
            sums[f"recall@{k}"] += n_hit / len(relevant)
            sums[f"precision@{k}"] += n_hit / k
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hit_rate@{k}"] += float(n_hit > 0)
            # reciprocal rank of the first hit (RecBole's MRR), 0 without one
            sums[f"mrr@{k}"] += next((1.0 / (pos + 1) for pos, h in enumerate(hits) if h), 0.0)
            covered[k].update(top)
    out = {name: total / len(users) for name, total in sums.items()}
    out.update({f"coverage@{k}": len(covered[k]) / n_items for k in ks})
    return out
