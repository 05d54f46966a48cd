"""The sparse embedding gradients of `train.sparse_embeddings` averaged over a gloo group in one
collective per step (distributed.step_loss; `twotower train train.nproc=N`).

DDP hands each sparse gradient to gloo's sparse all-reduce, which gathers every rank's sizes,
then its rows, then its values: three collectives per table, one after the other, which on the
bench were a third of a 2-rank step's collective time (docs/scale.md). Here the tables stay out
of DDP. A table's gradient holds at most one (row, values) pair per row it looked up, and every
rank looks up as many (equal slices of the global batch), so each table's pairs, padded to that
count with row -1, go with every other table's into one buffer and one all_gather. Each rank's
gradient is then every rank's pairs (uncoalesced, as nn.Embedding makes them) divided by the
world size: DDP's average, and the one-process gradient (tests/e2e/test_distributed.py).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Variable


class SparseGradSync:
    """Counts each sparse table's lookups in the training forward (`start` resets them) and,
    when the backward pass ends, replaces every sparse table's gradient by the ranks' mean."""

    def __init__(self, model: nn.Module, world_size: int) -> None:
        self.world_size = world_size
        self.names = [
            f"{name}.weight"
            for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and m.sparse and m.weight.requires_grad
        ]
        modules = dict(model.named_modules())
        self.tables = [modules[n.removesuffix(".weight")] for n in self.names]
        self.lookups = [0] * len(self.tables)
        for i, table in enumerate(self.tables):
            table.register_forward_pre_hook(partial(self._count, i))

    def _count(self, i: int, module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            self.lookups[i] += args[0].numel()

    def start(self) -> None:
        self.lookups = [0] * len(self.tables)

    def broadcast_weights(self) -> None:
        """Rank 0's tables on every rank (DDP does so for the parameters it holds)."""
        for table in self.tables:
            dist.broadcast(table.weight.data, src=0)

    def after_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss`, whose backward pass ends by averaging the tables' gradients."""
        return _AtBackwardEnd.apply(loss, self.sync) if self.tables else loss

    def sync(self) -> None:
        parts = [_pairs(t.weight, n) for t, n in zip(self.tables, self.lookups, strict=True)]
        buf = torch.cat([p.reshape(-1) for p in parts])
        out = buf.new_empty(self.world_size * len(buf))
        dist.all_gather_single(out, buf)
        out, start = out.view(self.world_size, -1), 0
        for table, part in zip(self.tables, parts, strict=True):
            block = out[:, start : start + part.numel()].reshape(-1, part.shape[1])
            start += part.numel()
            rows, values = _unpack(block)
            keep = rows >= 0
            table.weight.grad = torch.sparse_coo_tensor(
                rows[keep].unsqueeze(0),
                values[keep] / self.world_size,
                table.weight.shape,
                check_invariants=False,  # rows of this table by construction; a check costs
            )


def _pairs(weight: torch.Tensor, n: int) -> torch.Tensor:
    """[n, k + dim]: the gradient's rows (int64 bits in the k leading columns of the weight's
    dtype, so they travel exactly) and values, padded to n pairs with row -1."""
    k = 8 // weight.element_size()
    out = weight.new_zeros((n, k + weight.shape[1]))
    out[:, :k] = torch.full((n,), -1, dtype=torch.int64).view(weight.dtype).view(n, k)
    grad = weight.grad
    if grad is None or n == 0:
        return out
    rows, values = grad._indices()[0], grad._values()
    if len(rows) > n:
        raise RuntimeError(
            f"a sparse gradient of {len(rows)} rows after {n} lookups: gradients accumulated "
            "over several steps cannot be averaged over the ranks"
        )
    out[: len(rows), :k] = rows.contiguous().view(weight.dtype).view(len(rows), k)
    out[: len(rows), k:] = values
    return out


def _unpack(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_pairs` read back: (rows, values)."""
    k = 8 // block.element_size()
    return block[:, :k].contiguous().view(torch.int64).view(-1), block[:, k:]


class _AtBackwardEnd(torch.autograd.Function):
    """Identity on the loss. Its backward, the first node of the backward pass, queues `fn` on
    the autograd engine to run once the pass has put every gradient in place (how DDP and FSDP
    finish their own gradient work)."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, fn) -> torch.Tensor:
        ctx.fn = fn
        return loss.view_as(loss)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        Variable._execution_engine.queue_callback(ctx.fn)
        return grad, None
