"""Losses: the loss decides the negatives (temperature comes from the model's logit_scale).

`loss: auto` follows the sampler: explicit negatives -> bce, none -> in-batch softmax.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

LOSSES = ("auto", "bce", "inbatch_softmax")


def bce(scale: float, u: torch.Tensor, v: torch.Tensor, label: torch.Tensor, **_) -> torch.Tensor:
    """Pointwise binary cross-entropy on the scaled similarity (classic DSSM, labels 1/0)."""
    return F.binary_cross_entropy_with_logits((u * v).sum(-1) * scale, label)


def inbatch_softmax(
    scale: float,
    u: torch.Tensor,
    v: torch.Tensor,
    item: torch.Tensor,
    log_q: torch.Tensor | None = None,
    **_,
) -> torch.Tensor:
    """Softmax of each user's positive against the batch's other items.

    logit[i, j] = scale * <u_i, v_j> - log Q(item_j)  (Yi et al., RecSys 2019); an item that is
    also row i's positive (the same id at another column) is masked out, not a negative.
    """
    logits = (u @ v.T) * scale
    if log_q is not None:
        logits = logits - log_q[item].unsqueeze(0)
    same = item.unsqueeze(0) == item.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(u), device=u.device)
    return F.cross_entropy(logits, target)


def resolve(loss: str, sampler_loss: str):
    """The loss function for a config value (`auto` takes the sampler's)."""
    if loss not in LOSSES:
        raise ValueError(f"loss: {loss!r} not in {LOSSES}")
    name = sampler_loss if loss == "auto" else loss
    return {"bce": bce, "inbatch_softmax": inbatch_softmax}[name], name
