"""The training loop (`twotower train`): batches gathered from pre-built tensors, early stopping
on validation Recall@k, best weights kept."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class Loop:
    """What every epoch of one `train` call works with, set up once (`_set_up`)."""

    model: TwoTower
    step_loss: Callable
    opts: list[torch.optim.Optimizer]
    gen: torch.Generator  # the shuffles and the item-id dropout
    examples: dict[str, torch.Tensor]
    user_table: dict[str, torch.Tensor]
    item_table: dict[str, torch.Tensor]
    bounds: list[tuple[int, int]]  # [start, stop) of each global batch in a shuffle
    group: distributed.Group
    device: str
    settings: TrainSettings
    batch_fn: Callable | None


@dataclass
class Progress:
    """Early stopping's state after each epoch: the best validation score and its weights, the
    history, the epochs waited since the best, whether training stopped (saved for a resume)."""

    best: float = -1.0
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    waited: int = 0
    stopped: bool = False

    def judge(self, score: float | None, model: TwoTower, patience: int, steps_left: int) -> None:
        """The epoch's validation score counted: a better one keeps the weights, a worse one
        waits; training stops when patience runs out, or train.max_steps leaves no step for
        another epoch. Without validation (None) only the steps stop it."""
        if score is not None:
            if score > self.best:
                self.best, self.best_state = score, copy.deepcopy(model.state_dict())
                self.waited = 0
            else:
                self.waited += 1
        self.stopped = self.waited >= patience or steps_left == 0

    def snapshot(self, loop: Loop) -> dict:
        """What a resume needs to continue after this epoch (resume.py)."""
        return snapshot(loop.model, loop.opts, loop.gen, loop.batch_fn, self.best,
                        self.best_state, self.history, self.waited, self.stopped)  # fmt: skip


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
    loop = _set_up(model, loss_fn, examples, user_table, item_table, settings, batch_fn, seed)
    progress = _resume(loop, resume)
    epoch_done = on_epoch if on_epoch is not None and loop.group.is_main else lambda record: None
    for record in progress.history:
        epoch_done(record)
    first = settings.epochs if progress.stopped else len(progress.history)
    # with no validation the fit is a refit on train + validation (train.refit, fit_on)
    epochs = bar(desc="train" if valid is not None else "refit", unit="epoch", initial=first,
                 total=settings.epochs, disable=not loop.group.is_main)  # fmt: skip
    for epoch in range(first, settings.epochs):
        record = _epoch(loop, epoch, progress.history, valid, n_items)
        progress.history.append(record)
        epoch_done(record)
        _show(epochs, record, settings.early_stop_k)
        steps_left = steps_allowed(len(loop.bounds), settings.max_steps, progress.history)
        progress.judge(record.get(_valid_key(settings)), model, settings.patience, steps_left)
        if resume is not None:  # one state for every rank (resume.py)
            resume.save(loop.group, epoch + 1, progress.snapshot(loop))
        if progress.stopped:
            break
    epochs.close()
    _finish(loop, progress)
    return progress.history


def _set_up(model: TwoTower, loss_fn, examples: dict[str, torch.Tensor],
            user_table: dict[str, torch.Tensor], item_table: dict[str, torch.Tensor],
            settings: TrainSettings, batch_fn, seed: int) -> Loop:  # fmt: skip
    """The model, tables and examples on the training device, the optimisers, the seeded
    generators and this rank's batches."""
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
    bounds = distributed.batch_bounds(len(examples["user"]), settings.batch_size,
                                      group.world_size)  # fmt: skip
    return Loop(model, step_loss, opts, gen, examples, user_table, item_table, bounds, group,
                device, settings, batch_fn)  # fmt: skip


def _resume(loop: Loop, resume: Resume | None) -> Progress:
    """The saved state put back where `resume` has one for these settings (collective), else a
    fresh start."""
    state = resume.load(loop.group) if resume is not None else None
    if state is None:
        return Progress()
    progress = Progress(*restore(state, loop.model, loop.opts, loop.gen, loop.batch_fn,
                                 loop.group.rank))  # fmt: skip
    if loop.group.is_main:
        print(f"train: resuming after epoch {len(progress.history)} ({resume.dir})", flush=True)
    return progress


def _epoch(loop: Loop, epoch: int, history: list[dict], valid: EvalSet | None,
           n_items: int) -> dict:  # fmt: skip
    """One epoch trained (under train.max_steps, counted from `history`) and validated: its
    history record."""
    loop.model.train()
    distributed.barrier(loop.group)  # the epoch's rate counts training, not a peer still loading
    start = time.perf_counter()
    bounds = loop.bounds[: steps_allowed(len(loop.bounds), loop.settings.max_steps, history)]
    n_used = sum(e - s for s, e in bounds)
    total = distributed.total(_train_batches(loop, epoch, bounds), loop.group)
    train_s = time.perf_counter() - start
    if not math.isfinite(total):  # the same reduced total on every rank: all stop together
        raise TwoTowerError(f"train: the loss became {total} in epoch {epoch + 1} (try a "
                            "lower train.lr); nothing was written")  # fmt: skip
    scored = {}
    if valid is not None:
        k = loop.settings.early_stop_k
        score = (validate(loop.model, loop.user_table, loop.item_table, valid, k, n_items)
                 if loop.group.is_main else 0)  # fmt: skip
        scored = {_valid_key(loop.settings): distributed.from_main(score, loop.group)}
    return {"epoch": epoch + 1, "loss": total / n_used, **scored,
            "seconds": time.perf_counter() - start, "samples_per_s": n_used / train_s,
            "steps": len(bounds)}  # fmt: skip


def _train_batches(loop: Loop, epoch: int, bounds: list[tuple[int, int]]) -> float:
    """One pass over the global batches `bounds` in a fresh shuffle: the summed loss over
    this rank's rows of them."""
    n = len(loop.examples["user"])
    # int32 while it can: the same permutation as int64, at half the memory
    perm = torch.randperm(n, generator=loop.gen, dtype=torch.int32 if n < 2**31 else torch.int64)
    perm = perm.to(loop.device)
    batches = bar(bounds, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                  mininterval=1.0, disable=not loop.group.is_main)  # fmt: skip
    total = 0.0
    for s, e in steps(batches, epoch + 1, loop.group.rank):
        total += _step(loop, perm[s:e])
    return total


def _step(loop: Loop, ids: torch.Tensor) -> float:
    """One optimiser step on the examples `ids` (this rank's share of them): the batch's summed
    loss."""
    batch = widen_ids(gather(loop.examples, ids))
    batch = negatives.rank_batch(batch, loop.batch_fn, loop.group.rank, loop.group.world_size,
                                 loop.settings.dist_negatives)  # fmt: skip
    neg = batch.get("neg")
    neg_feats = gather(loop.item_table, neg.reshape(-1)) if neg is not None else None
    item_feats = gather(loop.item_table, batch["item"])
    p = loop.settings.item_id_dropout
    if p > 0:
        item_feats = drop_ids(item_feats, p, loop.gen)
        if neg_feats is not None:
            neg_feats = drop_ids(neg_feats, p, loop.gen)
    loss = loop.step_loss(user_features(loop.user_table, batch), item_feats, batch, neg_feats)
    for opt in loop.opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in loop.opts:
        opt.step()
    return loss.item() * len(batch["user"])


def _valid_key(settings: TrainSettings) -> str:
    return f"valid_recall@{settings.early_stop_k}"


def _show(epochs, record: dict, k: int) -> None:
    """The epoch bar's one redraw (or one log line) per epoch, with this epoch's postfix."""
    scores = {f"val_r@{k}": f"{v:.4f}" for key, v in record.items() if key.startswith("valid_")}
    epochs.set_postfix(loss=f"{record['loss']:.4f}", **scores, refresh=False)
    epochs.update()


def _finish(loop: Loop, progress: Progress) -> None:
    """The best weights back in the model (the last ones without validation), and the model as
    it came: dense embedding tables, on the CPU."""
    if progress.best_state is not None:
        loop.model.load_state_dict(progress.best_state)
    for table in loop.model.modules():
        if isinstance(table, torch.nn.Embedding) and loop.settings.sparse_embeddings:
            table.sparse = False  # the model leaves training as it came
    loop.model.cpu()
