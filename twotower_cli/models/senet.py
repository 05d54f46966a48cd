"""DSSM with a SENet field re-weighting on each side before the MLP (`model=senet`).

The learned field weights, averaged over all users and over the catalogue, are saved with the
run as `field_weights.json` (through the `artifacts` hook) to show which features the model keeps.
"""

from __future__ import annotations

import numpy as np
import torch

from twotower_cli.models.base import TwoTower
from twotower_cli.models.blocks import MLP, SENet


class SENetTower(TwoTower):
    def __init__(
        self,
        schema: dict[str, list],
        embed_dim: int = 32,
        hidden: list[int] | tuple[int, ...] = (256,),
        out_dim: int = 64,
        dropout: float = 0.0,
        reduction: int = 2,
        similarity: str = "cosine",
        temperature: float = 0.05,
        history: bool = False,
        history_len: int = 20,
        history_pooling: str = "mean",
    ) -> None:
        super().__init__(similarity, temperature)
        self.build_fields(schema, embed_dim, history, history_len, history_pooling)
        hidden = list(hidden)
        self.user_se = SENet(self.n_user_fields, reduction)
        self.item_se = SENet(self.item_fields.n_fields, reduction)
        self.user_mlp = MLP(self.n_user_fields * embed_dim, hidden, out_dim, dropout)
        self.item_mlp = MLP(self.item_fields.n_fields * embed_dim, hidden, out_dim, dropout)

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.user_mlp(self.user_se(self.user_embeddings(feats)).flatten(1)))

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.item_mlp(self.item_se(self.item_embeddings(feats)).flatten(1)))

    @torch.no_grad()
    def field_weights(
        self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, float]]:
        """Mean SENet weight per field over every user / item row of the tables (row 0, the
        padding row, left out)."""
        was_training = self.training
        self.eval()
        out = {}
        for side, table, se, embed, names in (
            ("user", users, self.user_se, self.user_embeddings, self.user_field_names),
            ("item", items, self.item_se, self.item_embeddings,
             [f.name for f in self.item_fields.fields]),
        ):  # fmt: skip
            rows = {name: t[1:] for name, t in table.items()}
            w = se.weights(embed(rows)).mean(0).cpu().numpy()
            out[side] = {
                n: round(float(x), 4) for n, x in zip(names, np.atleast_1d(w), strict=True)
            }
        self.train(was_training)
        return out

    def artifacts(
        self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
    ) -> dict[str, object]:
        return {"field_weights": self.field_weights(users, items)}
