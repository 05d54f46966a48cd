"""Classic DSSM two-tower: field embeddings concatenated, an MLP per side (`model=dssm`)."""

from __future__ import annotations

import torch

from twotower_cli.models.base import TowerSettings, TwoTower
from twotower_cli.models.blocks import MLP


class DSSM(TwoTower):
    def __init__(self, schema: dict[str, list], **tower) -> None:
        """`tower`: the shared settings (core.settings.TowerSettings)."""
        t = TowerSettings.of(tower)
        super().__init__(schema, t)
        d, hidden = t.embed_dim, list(t.hidden)
        self.user_mlp = MLP(self.n_user_fields * d, hidden, t.out_dim, t.dropout)
        self.item_mlp = MLP(self.item_fields.n_fields * d, hidden, t.out_dim, t.dropout)

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.user_mlp(self.user_embeddings(feats).flatten(1)))

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.item_mlp(self.item_embeddings(feats).flatten(1)))
