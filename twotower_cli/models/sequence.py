"""The user's history as a sequence: a causal self-attention encoder over the item ids in time
order (`model.history_pooling=transformer`, docs/sequence.md), SASRec-style (Kang & McAuley,
ICDM 2018), with pre-norm blocks.

`history` is [batch, n <= length] item ids, most recent last, left-padded with 0 (the layout of
training, `embed` and `serve`). Each item has a learned position embedding counted from the
first item of the history (0 for the oldest item shown), so the encoder's output at item t
depends on items 0..t only, exactly as the output at the last position of a history that ends
at t: the next-item training at every position trains what serving computes for that prefix
(tested). Position t attends to positions <= t that hold an item (and to itself, so a padded
position is never empty). Serving reads the last position; next-item training every position
(`at`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from twotower_cli.core.errors import ConfigError
from twotower_cli.models.blocks import MLP, Dropout


class CausalBlock(nn.Module):
    """x + attention(norm(x)) then x + feed-forward(norm(x)), causal. The items sit left-aligned
    (padding last), so the causal mask alone keeps every item from seeing padding, and
    `scaled_dot_product_attention(is_causal=True)` takes its fused kernel (an explicit padding
    mask sends it down the unfused path: ~3x slower here). No dropout on the attention weights
    (a per-weight draw over [batch, n, n] cost more than the rest of the block)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = MLP(dim, [dim], dim, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)  # fmt: skip
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """[batch, length] item ids -> [batch, dim] (the last position) or, with `at` (flat
    indices into [batch * length]), [len(at), dim]: the encoder's output at those positions."""

    def __init__(self, dim: int, length: int, layers: int = 2, heads: int = 1,
                 dropout: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.history_heads={heads} must divide model.embed_dim={dim}")
        self.dim, self.length = dim, length
        self.positions = nn.Embedding(length, dim)
        nn.init.normal_(self.positions.weight, std=0.05)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        history: torch.Tensor,
        table: nn.Embedding,
        context: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = history.shape[1]
        if n > self.length:
            raise ValueError(f"history has {n} columns; the encoder knows {self.length}")
        # left-align each row (its padding moves to the end): column j then holds the item at
        # position j from the oldest shown, and causal attention never reaches the padding
        pads = n - (history > 0).sum(1, keepdim=True)
        cols = torch.arange(n, device=history.device).unsqueeze(0)
        left = torch.remainder(cols + pads, n)  # left-aligned column j <- column j + pads
        items = history.gather(1, left)
        present = (items > 0).unsqueeze(-1)
        x = table(items) * self.dim**0.5 + self.positions.weight[:n]
        x = self.drop(x) * present
        for block in self.blocks:
            x = block(x) * present
        x = self.norm(x)
        # back to the input's columns: right-aligned column j <- left-aligned column j - pads
        x = x.gather(1, torch.remainder(cols - pads, n).unsqueeze(-1).expand(-1, -1, self.dim))
        if at is None:
            return x[:, -1]
        return x.reshape(-1, self.dim).index_select(0, at)
