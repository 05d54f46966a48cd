"""Which negatives a rank's in-batch softmax sees under data-parallel training
(`twotower train train.nproc=N train.dist_negatives=global|local`; distributed.py runs the
group).

global (the default): each rank's rows are scored against the whole global batch's positives,
as one process at that batch would: the sampler's per-batch work runs on the global batch on
every rank, and the item vectors of the other ranks' rows arrive by an autograd all_gather
(gradients flow back to the rank that computed them), their ids, user ids and logQ read from
the global batch every rank holds. A rank's loss is then [B/N, B]: its work grows with N.

local: each rank is one process training on its slice: the sampler runs once per slice (every
rank runs all N, in rank order, so the sampler's state, e.g. the streaming logQ estimate, stays
the same on every rank and its logQ is the expected count among a slice's B/N rows) and a
rank's softmax has only its own rows as columns, so its work does not depend on N. Gradients
are still averaged over the ranks (DDP). No Hydra here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from twotower_cli.models.base import batch_rows

NEGATIVES = ("global", "local")
# the batch columns each row's in-batch softmax needs of every column
COLUMNS = ("item", "user", "log_q")


def rank_batch(batch: dict[str, torch.Tensor], batch_fn: Callable | None, rank: int,
               world_size: int, negatives: str = "global") -> dict[str, torch.Tensor]:  # fmt: skip
    """This rank's rows of a global batch after the sampler's per-batch work (`batch_fn`):
    under `global`, done once on the global batch (`local_rows`); under `local`, done on each
    of the world_size slices in turn, as one process would on batches of that size."""
    if world_size == 1 or negatives == "global":
        batch = batch_fn(batch) if batch_fn is not None else batch
        return local_rows(batch, rank, world_size)
    b = len(batch["user"]) // world_size
    slices = [batch_rows(batch, slice(r * b, (r + 1) * b)) for r in range(world_size)]
    if batch_fn is None:
        return slices[rank]
    return [batch_fn(s) for s in slices][rank]


def local_rows(batch: dict[str, torch.Tensor], rank: int,
               world_size: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """This rank's slice of a global batch (shared negatives stay whole), and under `all.<key>`
    the global batch's `item`, `user` and `log_q` columns in `gather_columns`' order: every
    rank holds the whole global batch, so the loss's columns need no collective."""
    if world_size == 1:
        return batch
    b = len(batch["user"]) // world_size
    rows = batch_rows(batch, slice(rank * b, (rank + 1) * b))
    for k in COLUMNS:
        if k in batch:
            rows[f"all.{k}"] = torch.roll(batch[k], -rank * b)  # this rank's rows first
    return rows


def gather_columns(
    v: torch.Tensor, batch: dict[str, torch.Tensor], rank: int, world_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every rank's item vectors (gradients flow back to the rank that computed them) and their
    `item`, `user` and `log_q` columns (`local_rows`), this rank's first, then the others in
    rank order: the loss's rows are this rank's, and its diagonal (row i's positive in column
    i) holds as in one process."""
    cols = torch.roll(_AllGather.apply(v, world_size), -rank * len(v), dims=0)
    out = {k: t for k, t in batch.items() if not k.startswith("all.")}
    out.update({k: batch[f"all.{k}"] for k in COLUMNS if f"all.{k}" in batch})
    return cols, out


class _AllGather(torch.autograd.Function):
    """The ranks' tensors stacked in rank order; backward: each rank's slice of the summed
    gradient. One collective each way: torch.distributed.nn.functional.all_gather sends the
    gradient back through world_size scatters on gloo, and its `_all_gather_base` has no gloo
    backward. (The contiguous gradient: the fused softmax's gradient of its columns is a
    transposed view, losses.py, and gloo reads memory as laid out.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, world_size: int) -> torch.Tensor:
        out = x.new_empty((world_size * len(x), *x.shape[1:]))
        dist.all_gather_single(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous())
        return out, None


def rank_loss(loss_fn: Callable, rank: int, world_size: int, negatives: str) -> Callable:
    """`loss_fn` as a rank computes it: under `global`, in-batch softmax over the global batch's
    columns (every rank's positives are negatives, hits among them masked); under `local`, or
    for losses that score each row against its own negatives only (bce, sampled softmax),
    `loss_fn` itself on the rank's rows."""
    from twotower_cli.training.losses import inbatch_softmax

    if world_size == 1 or negatives == "local" or loss_fn is not inbatch_softmax:
        return loss_fn

    def loss(scale: float, u, v, v_neg, batch: dict) -> torch.Tensor:
        cols, batch = gather_columns(v, batch, rank, world_size)
        return loss_fn(scale, u, cols, v_neg, batch)

    return loss
