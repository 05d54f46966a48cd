"""Classic DSSM two-tower: field embeddings concatenated, an MLP per side (`model=dssm`)."""

from __future__ import annotations

import torch

from twotower_cli.models.base import TwoTower
from twotower_cli.models.blocks import MLP


class DSSM(TwoTower):
    def __init__(
        self,
        schema: dict[str, list],
        embed_dim: int = 32,
        hidden: list[int] | tuple[int, ...] = (256,),
        out_dim: int = 64,
        dropout: float = 0.0,
        similarity: str = "cosine",
        temperature: float = 0.05,
        history: bool = False,
        history_len: int = 20,
        history_pooling: str = "mean",
        history_decay: float = 0.0,
    ) -> None:
        super().__init__(similarity, temperature)
        self.build_fields(schema, embed_dim, history, history_len, history_pooling, history_decay)
        hidden = list(hidden)
        self.user_mlp = MLP(self.n_user_fields * embed_dim, hidden, out_dim, dropout)
        self.item_mlp = MLP(self.item_fields.n_fields * embed_dim, hidden, out_dim, dropout)

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.user_mlp(self.user_embeddings(feats).flatten(1)))

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.item_mlp(self.item_embeddings(feats).flatten(1)))
