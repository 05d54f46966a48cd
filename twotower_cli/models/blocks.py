"""Building blocks shared by every tower variant: field embeddings, MLP."""

from __future__ import annotations

import torch
from torch import nn

from twotower_cli.data.tables import Field


def as_fields(fields: list) -> list[Field]:
    """Fields from a checkpoint or config arrive as dicts; the model wants Field objects."""
    return [f if isinstance(f, Field) else Field(**f) for f in fields]


class FieldEmbedding(nn.Module):
    """One side's features -> [batch, n_fields, dim].

    categorical: an embedding row (0 = padding/unknown, a zero vector); multihot: the mean of the
    present values' rows; numeric: a learned vector scaled by the value.
    """

    def __init__(self, fields: list, dim: int) -> None:
        super().__init__()
        self.fields = as_fields(fields)
        self.dim = dim
        self.tables = nn.ModuleDict()
        for f in self.fields:
            if f.kind == "numeric":
                self.tables[f.name] = nn.Linear(1, dim)
            else:
                self.tables[f.name] = nn.Embedding(f.vocab_size, dim, padding_idx=0)
                nn.init.normal_(self.tables[f.name].weight, std=0.05)
                with torch.no_grad():
                    self.tables[f.name].weight[0].zero_()

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        out = []
        for f in self.fields:
            x = feats[f.name]
            table = self.tables[f.name]
            if f.kind == "numeric":
                out.append(table(x.float().unsqueeze(-1)))
            elif f.kind == "multihot":
                mask = (x > 0).unsqueeze(-1).float()
                summed = (table(x) * mask).sum(1)
                out.append(summed / mask.sum(1).clamp(min=1.0))
            else:
                out.append(table(x))
        return torch.stack(out, dim=1)


class MLP(nn.Sequential):
    """Linear -> ReLU -> Dropout per hidden layer, then a linear output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
