"""The training loop (`twotower train`): batches gathered from pre-built tensors, early stopping
on validation Recall@k, best weights kept."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from twotower_cli.models.base import TwoTower
from twotower_cli.optim import LazyAdam
from twotower_cli.pools import with_item_prior
from twotower_cli.retrieval import EvalSet, build_index, evaluate_index


@dataclass
class TrainSettings:
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    early_stop_k: int = 20
    patience: int = 4
    device: str = "cpu"
    seed: int = 0
    # embedding tables get sparse gradients and a lazy Adam (optim.LazyAdam: only the batch's
    # rows and their moments move), so a step costs O(batch), not O(users + items)
    sparse_embeddings: bool = False
    # share of training rows whose item id feature is hidden (0 = unknown), so the item tower
    # learns to rank from content alone, as it must for items with no training positive
    # (whose ids are unknown at embed time when this is > 0; pools.unknown_cold_ids)
    item_id_dropout: float = 0.0


def gather(table: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's features: rows `ids` of every feature tensor (one indexing op per field)."""
    return {name: t[ids] for name, t in table.items()}


def user_features(
    user_table: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A batch's user features: rows of the user table, overridden by per-example ones (the
    examples' `user.<name>` columns, such as the history before each example)."""
    feats = gather(user_table, batch["user"])
    feats.update({k[5:]: t for k, t in batch.items() if k.startswith("user.")})
    return feats


def drop_ids(feats: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> dict:
    """The features with each row's `item` id set to 0 (unknown) with probability p."""
    ids = feats["item"]
    keep = torch.rand(ids.shape, generator=gen).to(ids.device) >= p
    return {**feats, "item": ids * keep}


def to_device(table: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {name: t.to(device) for name, t in table.items()}


@torch.no_grad()
def encode_all(model: TwoTower, table: dict[str, torch.Tensor], ids: np.ndarray, side: str,
               batch: int = 65536) -> np.ndarray:  # fmt: skip
    """Serving vectors for entity ids, in large batches."""
    model.eval()
    fn = model.user_vectors if side == "user" else model.item_vectors
    device = next(iter(table.values())).device
    out = [
        fn(gather(table, torch.as_tensor(ids[s : s + batch], device=device))).float().cpu()
        for s in range(0, len(ids), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def validate(model, user_table, item_table, ev: EvalSet, k: int, n_items: int) -> float:
    ids = np.arange(1, n_items + 1) if ev.pool is None else ev.pool
    items = encode_all(model, item_table, ids, "item")
    users = encode_all(model, user_table, ev.users, "user")
    if ev.item_log_prior is not None:  # as `embed` ranks the test period
        users, items = with_item_prior(users, items, ev.item_log_prior[ids], 1.0,
                                       model.logit_scale)  # fmt: skip
    index = build_index(items, "Flat")
    pool = None if ev.pool is None else ids
    return evaluate_index(index, users, ev, [k], n_items, ids=pool)[f"recall@{k}"]


def optimizers(model: torch.nn.Module, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    """Adam over every parameter; with sparse_embeddings, LazyAdam over the nn.Embedding
    tables with more rows than a batch has examples (switched to sparse gradients; weight decay
    applies to the dense rest only). A smaller table has most of its rows in every batch, so
    it stays with the dense Adam, where it costs less than a lazy update."""
    dense_adam = lambda params: torch.optim.Adam(  # noqa: E731
        params, lr=settings.lr, weight_decay=settings.weight_decay, foreach=True
    )
    if not settings.sparse_embeddings:
        return [dense_adam(model.parameters())]
    tables = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and m.num_embeddings > settings.batch_size
    ]
    for table in tables:
        table.sparse = True
    sparse_ids = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    opts: list[torch.optim.Optimizer] = []
    if tables:
        opts.append(LazyAdam([t.weight for t in tables], lr=settings.lr))
    if dense:
        opts.append(dense_adam(dense))
    return opts


def train(
    model: TwoTower,
    loss_fn,
    examples: dict[str, torch.Tensor],
    user_table: dict[str, torch.Tensor],
    item_table: dict[str, torch.Tensor],
    valid: EvalSet,
    n_items: int,
    settings: TrainSettings,
    batch_fn=None,
) -> list[dict]:
    """Train in place; leaves the best-validation weights in `model`; returns per-epoch history.

    `examples` holds `user`, `item`, `label` and optionally `neg` ([n, n_neg] explicit negative
    ids); `batch_fn(batch) -> batch`, from the sampler, does its per-batch work (shared
    negatives, logQ columns); see samplers.py for the batch's keys.
    """
    torch.manual_seed(settings.seed)
    device = settings.device
    model.to(device)
    user_table, item_table = to_device(user_table, device), to_device(item_table, device)
    examples = to_device(examples, device)
    opts = optimizers(model, settings)
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(examples["user"])
    k = settings.early_stop_k
    best, best_state, history, waited = -1.0, None, [], 0
    epochs = tqdm(range(settings.epochs), desc="train", unit="epoch")
    for epoch in epochs:
        model.train()
        start, total = time.perf_counter(), 0.0
        perm = torch.randperm(n, generator=gen).to(device)
        batches = tqdm(range(0, n, settings.batch_size), desc=f"epoch {epoch + 1}",
                       unit="batch", leave=False, mininterval=1.0)  # fmt: skip
        for s in batches:
            batch = gather(examples, perm[s : s + settings.batch_size])
            batch = batch_fn(batch) if batch_fn is not None else batch
            neg = batch.get("neg")
            neg_feats = gather(item_table, neg.reshape(-1)) if neg is not None else None
            item_feats = gather(item_table, batch["item"])
            if settings.item_id_dropout > 0:
                item_feats = drop_ids(item_feats, settings.item_id_dropout, gen)
                if neg_feats is not None:
                    neg_feats = drop_ids(neg_feats, settings.item_id_dropout, gen)
            loss = model.batch_loss(loss_fn, user_features(user_table, batch), item_feats,
                                    batch, neg_feats)  # fmt: skip
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.item() * len(batch["user"])
        score = validate(model, user_table, item_table, valid, k, n_items)
        history.append({"epoch": epoch + 1, "loss": total / n, f"valid_recall@{k}": score,
                        "seconds": time.perf_counter() - start})  # fmt: skip
        epochs.set_postfix(loss=f"{total / n:.4f}", **{f"val_r@{k}": f"{score:.4f}"})
        if score > best:
            best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    for table in model.modules():
        if isinstance(table, torch.nn.Embedding) and settings.sparse_embeddings:
            table.sparse = False  # the model leaves training as it came
    model.cpu()
    return history
