"""The training loop (`twotower train`): batches gathered from pre-built tensors, early stopping
on validation Recall@k, best weights kept."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.progress import bar
from twotower_cli.core.settings import TrainSettings
from twotower_cli.models.base import TwoTower
from twotower_cli.retrieval.pools import with_item_prior
from twotower_cli.retrieval.search import EvalSet, build_index, evaluate_index
from twotower_cli.training import distributed, negatives
from twotower_cli.training.hooks import steps
from twotower_cli.training.optim import LazyAdam
from twotower_cli.training.resume import Resume, restore, snapshot


def gather(table: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's features: rows `ids` of every feature tensor (one indexing op per field).
    `index_select`, not `t[ids]`: the same rows, without advanced indexing's set-up (1,024 ids,
    one thread: 6 against 14 us per field; ten fields a DSSM step)."""
    if ids.dim() != 1:
        return {name: t[ids] for name, t in table.items()}
    return {name: t.index_select(0, ids) for name, t in table.items()}


def widen_ids(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch with its int32 id columns (examples are stored narrow) as int64."""
    return {k: v.long() if v.dtype == torch.int32 else v for k, v in batch.items()}


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
    """Serving vectors for entity ids, in large batches, written into one array (no second
    copy of millions of vectors for a concatenation)."""
    model.eval()
    fn = model.user_vectors if side == "user" else model.item_vectors
    device = next(iter(table.values())).device
    out = None
    for s in range(0, len(ids), batch):
        x = fn(gather(table, torch.as_tensor(ids[s : s + batch], device=device))).float().cpu()
        if out is None:
            out = np.empty((len(ids), x.shape[1]), np.float32)
        out[s : s + len(x)] = x.numpy()
    return out if out is not None else np.zeros((0, 0), np.float32)


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
    """The dense optimiser over every parameter (`settings.optimizer`, a partial taking the
    parameters; default Adam at settings.lr); with sparse_embeddings, LazyAdam over the
    nn.Embedding tables with more rows than a batch has examples (switched to sparse gradients;
    weight decay applies to the dense rest only). A smaller table has most of its rows in every
    batch, so it stays with the dense Adam, where it costs less than a lazy update. Under
    several ranks DDP all-reduces the sparse gradients as they are (gloo), and the lazy update
    of their sum is the one-process update; NCCL has no sparse all-reduce, so there every table
    stays dense (docs/scale.md)."""
    dense_adam = settings.optimizer if callable(settings.optimizer) else (
        lambda params: torch.optim.Adam(
            params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
        )
    )  # fmt: skip
    if not settings.sparse_embeddings or not distributed.sparse_supported(distributed.current()):
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


def steps_allowed(n_batches: int, max_steps: int, history: list[dict]) -> int:
    """The batches the next epoch may train under train.max_steps (0 = no cap), counted from
    the history so a resumed run keeps the same cap."""
    if not max_steps:
        return n_batches
    return max(0, min(n_batches, max_steps - sum(h["steps"] for h in history)))


def train(
    model: TwoTower,
    loss_fn,
    examples: dict[str, torch.Tensor],
    user_table: dict[str, torch.Tensor],
    item_table: dict[str, torch.Tensor],
    valid: EvalSet | None,
    n_items: int,
    settings: TrainSettings,
    batch_fn=None,
    seed: int = 0,
    resume: Resume | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train in place; leaves the best-validation weights in `model`; returns per-epoch history.
    With `valid` None (a refit on train + validation, `fit_on: train+valid`) every one of
    `settings.epochs` epochs runs and the last one's weights are kept.

    `examples` holds `user`, `item`, `label` and optionally `neg` ([n, n_neg] explicit negative
    ids); `batch_fn(batch) -> batch`, from the sampler, does its per-batch work (shared
    negatives, logQ columns); see samplers.py for the batch's keys. In a process group
    (distributed.py) each rank trains on its slice of every global batch, validation runs on
    rank 0 and its score is broadcast. With `resume`, every finished epoch's whole state is
    saved (atomically) and a matching saved state is picked up where it ended.
    `on_epoch(record)` gets each epoch's history record as it ends, on rank 0 (experiment
    tracking; a resumed run's earlier epochs first).
    """
    group = distributed.current()
    distributed.check(settings.batch_size, group, model)
    torch.manual_seed(seed + group.rank)  # dropout: other masks on other ranks' rows
    device = distributed.resolve_device(settings.device)
    model.to(device)
    user_table, item_table = to_device(user_table, device), to_device(item_table, device)
    examples = to_device(examples, device)
    opts = optimizers(model, settings)
    step_loss = distributed.step_loss(model, loss_fn, group, settings.dist_negatives)
    gen = torch.Generator().manual_seed(seed)
    n = len(examples["user"])
    k = settings.early_stop_k
    best, best_state, history, waited, stopped = -1.0, None, [], 0, False
    bounds = distributed.batch_bounds(n, settings.batch_size, group.world_size)
    quiet = not group.is_main
    state = resume.load(group) if resume is not None else None
    if state is not None:
        best, best_state, history, waited, stopped = restore(state, model, opts, gen, batch_fn,
                                                             group.rank)  # fmt: skip
        if group.is_main:
            print(f"train: resuming after epoch {len(history)} ({resume.dir})", flush=True)
    epoch_done = on_epoch if on_epoch is not None and group.is_main else lambda record: None
    for record in history:
        epoch_done(record)
    first = settings.epochs if stopped else len(history)
    epochs = bar(desc="train", unit="epoch", disable=quiet, initial=first, total=settings.epochs)
    for epoch in range(first, settings.epochs):
        model.train()
        distributed.barrier(group)  # the epoch's rate counts training, not a peer still loading
        start, total = time.perf_counter(), 0.0
        # int32 while it can: the same permutation as int64, at half the memory
        perm = torch.randperm(n, generator=gen, dtype=torch.int32 if n < 2**31 else torch.int64)
        perm = perm.to(device)
        epoch_bounds = bounds[: steps_allowed(len(bounds), settings.max_steps, history)]
        n_used = sum(e - s for s, e in epoch_bounds)
        batches = bar(epoch_bounds, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                       mininterval=1.0, disable=quiet)  # fmt: skip
        for s, e in steps(batches, epoch + 1, group.rank):
            batch = widen_ids(gather(examples, perm[s:e]))
            batch = negatives.rank_batch(batch, batch_fn, group.rank, group.world_size,
                                         settings.dist_negatives)  # fmt: skip
            neg = batch.get("neg")
            neg_feats = gather(item_table, neg.reshape(-1)) if neg is not None else None
            item_feats = gather(item_table, batch["item"])
            if settings.item_id_dropout > 0:
                item_feats = drop_ids(item_feats, settings.item_id_dropout, gen)
                if neg_feats is not None:
                    neg_feats = drop_ids(neg_feats, settings.item_id_dropout, gen)
            loss = step_loss(user_features(user_table, batch), item_feats, batch,
                             neg_feats)  # fmt: skip
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.item() * len(batch["user"])
        total, train_s = distributed.total(total, group), time.perf_counter() - start
        if not math.isfinite(total):  # the same reduced total on every rank: all stop together
            raise TwoTowerError(f"train: the loss became {total} in epoch {epoch + 1} (try a "
                                "lower train.lr); nothing was written")  # fmt: skip
        scored = {}
        if valid is not None:
            score = (validate(model, user_table, item_table, valid, k, n_items)
                     if group.is_main else 0)  # fmt: skip
            scored = {f"valid_recall@{k}": distributed.from_main(score, group)}
        history.append({"epoch": epoch + 1, "loss": total / n_used, **scored,
                        "seconds": time.perf_counter() - start,
                        "samples_per_s": n_used / train_s,
                        "steps": len(epoch_bounds)})  # fmt: skip
        epoch_done(history[-1])
        epochs.set_postfix(loss=f"{total / n_used:.4f}",
                           **{f"val_r@{k}": f"{v:.4f}" for v in scored.values()},
                           refresh=False)  # fmt: skip
        epochs.update()  # one redraw (or one log line) per epoch, with this epoch's postfix
        for score in scored.values():
            if score > best:
                best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
        # patience ran out, or train.max_steps leaves no step for another epoch
        stopped = waited >= settings.patience or (
            steps_allowed(len(bounds), settings.max_steps, history) == 0)  # fmt: skip
        if resume is not None:  # one state for every rank (resume.py)
            resume.save(group, epoch + 1, snapshot(model, opts, gen, batch_fn, best, best_state,
                                                   history, waited, stopped))  # fmt: skip
        if stopped:
            break
    epochs.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    for table in model.modules():
        if isinstance(table, torch.nn.Embedding) and settings.sparse_embeddings:
            table.sparse = False  # the model leaves training as it came
    model.cpu()
    return history
