"""Optimisers the trainer builds (`trainer.optimizers`).

`LazyAdam` is `torch.optim.SparseAdam`'s update (only the rows a batch touched move, their
moments too, with the table's step count for bias correction) done with index ops on the
touched rows instead of sparse-tensor arithmetic: SparseAdam coalesces the gradient, then builds
three sparse tensors and masks the moments per table, which cost ~0.7 ms per table per step at
batch 1024 (measured, docs/bench.md); this costs a few small dense ops.
"""

from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam for parameters with sparse (COO) gradients, such as `nn.Embedding(sparse=True)`
    weights: rows absent from the gradient keep their values and moments."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "LazyAdam needs sparse gradients (nn.Embedding(sparse=True))"
                    )
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                rows, grad = _row_sums(p.grad)
                if len(rows) == 0:
                    continue
                m = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                v.addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                # rows are distinct: gather, add, write back (index_add_ into the whole table
                # took ~2x as long, same values)
                w = p.index_select(0, rows).add_(m.div_(v.sqrt_().add_(group["eps"])),
                                                 alpha=-step_size)  # fmt: skip
                p.index_copy_(0, rows, w)
        return loss


def _row_sums(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An uncoalesced [n, d] row-sparse gradient -> (distinct rows, [rows, d] summed values)."""
    idx, values = grad._indices()[0], grad._values()
    rows, inverse = torch.unique(idx, return_inverse=True)
    summed = values.new_zeros((len(rows), *values.shape[1:]))
    return rows, summed.index_add_(0, inverse, values)
