"""DSSM with a SENet field re-weighting on each side before the MLP (`model=senet`).

The learned field weights, averaged over all users and over the catalogue, are saved with the
run as `field_weights.json` (through the `artifacts` hook) to show which features the model keeps.
"""

from __future__ import annotations

import numpy as np
import torch

from twotower_cli.models.blocks import SENet
from twotower_cli.models.dssm import DSSM


class SENetTower(DSSM):
    """DSSM's fields and MLPs, with a SENet between them on each side."""

    def __init__(self, schema: dict[str, list], reduction: int = 2, **tower) -> None:
        super().__init__(schema, **tower)
        self.user_se = SENet(self.n_user_fields, reduction)
        self.item_se = SENet(self.item_fields.n_fields, reduction)

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
