"""Parallel multi-channel towers (`model=parallel`): several channels per side over the same
field embeddings, score = sum over channels of cos(u_c, v_c) / temperature.

Channels (`channels: [dnn, fm, dcn]`): `dnn` an MLP of the concatenated fields, `fm` the
second-order factorisation-machine interaction vector projected to `out_dim`, `dcn` a cross
network then a projection. Serving concatenates the per-channel normalised vectors, so one
inner-product search over the concatenation ranks exactly by the summed cosine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from twotower_cli.core.errors import ConfigError
from twotower_cli.models.base import TowerSettings, TwoTower
from twotower_cli.models.blocks import MLP, CrossNetwork, fm_interaction

CHANNELS = ("dnn", "fm", "dcn")


class FMChannel(nn.Module):
    def __init__(self, n_fields: int, embed_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, out_dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.proj(fm_interaction(e))


class DNNChannel(nn.Module):
    def __init__(self, n_fields: int, embed_dim: int, out_dim: int, hidden: list[int],
                 dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.mlp = MLP(n_fields * embed_dim, hidden, out_dim, dropout)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(e.flatten(1))


class DCNChannel(nn.Module):
    def __init__(self, n_fields: int, embed_dim: int, out_dim: int, n_layers: int) -> None:
        super().__init__()
        self.cross = CrossNetwork(n_fields * embed_dim, n_layers)
        self.proj = nn.Linear(n_fields * embed_dim, out_dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.proj(self.cross(e.flatten(1)))


class ParallelTower(TwoTower):
    def __init__(self, schema: dict[str, list], channels: list[str] | tuple[str, ...] = CHANNELS,
                 cross_layers: int = 2, **tower) -> None:  # fmt: skip
        t = TowerSettings.of(tower)
        super().__init__(schema, t)
        embed_dim, hidden, out_dim, dropout = t.embed_dim, list(t.hidden), t.out_dim, t.dropout
        channels = list(channels)
        bad = [c for c in channels if c not in CHANNELS]
        if not channels or bad or len(set(channels)) != len(channels):
            raise ConfigError(f"model.channels: {channels} must be distinct names from {CHANNELS}")
        self.channels = channels
        self.out_dim = out_dim

        def make(name: str, n_fields: int) -> nn.Module:
            if name == "dnn":
                return DNNChannel(n_fields, embed_dim, out_dim, hidden, dropout)
            if name == "fm":
                return FMChannel(n_fields, embed_dim, out_dim)
            return DCNChannel(n_fields, embed_dim, out_dim, cross_layers)

        self.user_channels = nn.ModuleDict({c: make(c, self.n_user_fields) for c in channels})
        self.item_channels = nn.ModuleDict(
            {c: make(c, self.item_fields.n_fields) for c in channels}
        )

    def _serve(self, e: torch.Tensor, heads: nn.ModuleDict) -> torch.Tensor:
        """Per-channel vectors, each finished (normalised under cosine), concatenated."""
        return torch.cat([self.finish(heads[c](e)) for c in self.channels], dim=-1)

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._serve(self.user_embeddings(feats), self.user_channels)

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._serve(self.item_embeddings(feats), self.item_channels)

    def channel_scores(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[batch, n_channels] similarity per channel of paired serving rows, computed
        channel by channel (cosine re-normalises each block, so the test of the serving
        contract compares against an independent computation)."""
        cols = []
        for i in range(len(self.channels)):
            a, b = (x[:, i * self.out_dim : (i + 1) * self.out_dim] for x in (u, v))
            if self.similarity == "cosine":
                cols.append(F.cosine_similarity(a, b, dim=-1))
            else:
                cols.append((a * b).sum(-1))
        return torch.stack(cols, dim=-1)
