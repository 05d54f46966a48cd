"""What every tower variant shares: the similarity and the serving contract.

A model returns serving vectors: `user_vectors(feats)` and `item_vectors(feats)` whose inner
product ranks exactly like the training score, so one inner-product faiss index serves it.
The training logit is that inner product times `logit_scale` (1/temperature for cosine).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SIMILARITIES = ("cosine", "dot")


class TwoTower(nn.Module):
    def __init__(self, similarity: str = "cosine", temperature: float = 0.05) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"model.similarity: {similarity!r} not in {SIMILARITIES}")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        self.similarity = similarity
        self.temperature = temperature

    @property
    def logit_scale(self) -> float:
        return 1.0 / self.temperature if self.similarity == "cosine" else 1.0

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """A tower's raw output -> its serving vector (L2-normalised under cosine)."""
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Training logits of paired rows (u[i], v[i])."""
        return (u * v).sum(-1) * self.logit_scale
