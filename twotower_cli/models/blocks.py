"""Building blocks shared by every tower variant: field embeddings, MLP, SENet, FM, cross
network and the pooled user history."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from twotower_cli.core.errors import ConfigError
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
                continue
            rows = self.lookup(table, x)
            if f.kind == "multihot":
                mask = (x > 0).unsqueeze(-1).float()
                out.append((rows * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            else:
                out.append(rows)
        return torch.stack(out, dim=1)

    def lookup(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """table(ids); in training a dense-gradient table takes `_Lookup`'s backward."""
        if self.training and not table.sparse and table.weight.requires_grad:
            return _Lookup.apply(table.weight, ids, table.padding_idx)
        return table(ids)


class _Lookup(torch.autograd.Function):
    """An embedding lookup whose (dense) weight gradient is one `index_add_` of the rows'
    gradients into zeros, the padding row then zeroed: the sums ATen's embedding_dense_backward
    makes (tested), which sorts the ids first and took ~2.7x as long for the bench's
    1,024-id lookups into tables of 8-21 rows (docs/bench.md)."""

    @staticmethod
    def forward(ctx, weight, ids, padding_idx):
        ctx.save_for_backward(ids)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        return F.embedding(ids, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        dim = grad.shape[-1]
        out = grad.new_zeros(ctx.rows, dim).index_add_(0, ids.reshape(-1), grad.reshape(-1, dim))
        if ctx.padding_idx is not None:
            out[ctx.padding_idx].zero_()
        return out, None, None


class Dropout(nn.Module):
    """Inverted dropout, like nn.Dropout, with a cheaper mask: nn.Dropout's per-element
    bernoulli_ draw was the largest cost of a DSSM training step after the matmuls (1.9 ms of
    26 per step at batch 1024, docs/bench.md). Here every 16 random bits of one 64-bit draw
    are one element's uniform value, so p is kept to the nearest 1/65536."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = -(2**15) + round(p * 2**16)  # keep an int16 draw >= threshold

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(x, relu=False) if self.active else x

    def masked(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """x (relu(x) with `relu`) with the dropped elements zeroed and the kept ones scaled,
        from 16 random bits an element."""
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
        # from/to spanning the whole int64 range: all 64 bits random (plain random_() leaves
        # the sign bit 0)
        bits.random_(-(2**63), 2**63 - 1)
        draw = bits.view(torch.int16)[: x.numel()].view(x.shape)
        return _MaskedScale.apply(x, draw, self.threshold, 1.0 / (1.0 - self.p), relu)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class L2Normalize(torch.autograd.Function):
    """`F.normalize(x, dim=-1)` (the same values) with a backward of a few ops on the saved
    output y = x / max(|x|, eps): grad_x = (g - y <g, y>) / max(|x|, eps), and g / eps for a row
    whose norm was clamped. Autograd's chain through norm, clamp_min, expand and div ran ~12 ops
    per tower (forward + backward at [1024, 64]: 0.64 against 1.05 ms, docs/bench.md)."""

    EPS = 1e-12  # F.normalize's default

    @staticmethod
    def forward(ctx, x):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        denom = norm.clamp_min(L2Normalize.EPS)
        y = x / denom
        ctx.save_for_backward(y, denom, norm)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, denom, norm = ctx.saved_tensors
        dot = (grad * y).sum(-1, keepdim=True).masked_fill_(norm < L2Normalize.EPS, 0.0)
        return torch.addcmul(grad, y, dot, value=-1.0).div_(denom)


class _MaskedScale(torch.autograd.Function):
    """relu(x) (or x) * [draw >= threshold] * scale in 4 passes forward and 2 backward, each one
    vectorised ATen op: `threshold_backward(a, b, t)` is "a where b > t, else 0", so the int16
    draws, made float (exact: they are integers), select the kept elements without a bool mask
    (on CPU a bool comparison, its conversion to float or torch.where each cost ~3x a float
    pass, docs/bench.md). With the ReLU, the output itself says where the gradient flows
    (out > 0 exactly where x > 0 and the element is kept), so backward reads no mask."""

    @staticmethod
    def forward(ctx, x, draw, threshold, scale, relu):
        draw = draw.to(x.dtype)  # int16 values: exact in float32
        out = torch.ops.aten.threshold_backward(x, draw, threshold - 0.5)
        if relu:
            out.clamp_min_(0.0)
        out.mul_(scale)
        ctx.threshold, ctx.scale, ctx.relu = threshold, scale, relu
        ctx.save_for_backward(out if relu else draw)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        limit = 0.0 if ctx.relu else ctx.threshold - 0.5
        g = torch.ops.aten.threshold_backward(grad, saved.to(grad.dtype), limit)
        return g.mul_(ctx.scale), None, None, None, None


class MLP(nn.Sequential):
    """Linear -> ReLU -> Dropout per hidden layer, then a linear output layer. In training a
    ReLU and its Dropout run as one masked product (`Dropout.masked`): 4 passes over the
    hidden activations forward and 2 backward (a float mask built by arithmetic took 8 and 1),
    the same values and gradients from the same random draws as the two layers in turn."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(), Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        fused = False
        for layer, after in zip(layers, layers[1:] + [None], strict=True):
            if fused:  # this Dropout ran with the ReLU before it
                fused = False
                continue
            fused = isinstance(layer, nn.ReLU) and isinstance(after, Dropout) and after.active
            x = after.masked(x, relu=True) if fused else layer(x)
        return x


class SENet(nn.Module):
    """Squeeze-excitation over fields (FiBiNET, Huang et al., RecSys 2019).

    squeeze: each field's embedding -> its mean; excite: Linear(F, F/r) -> ReLU ->
    Linear(F/r, F) -> sigmoid; each field's embedding is multiplied by its weight in (0, 1).
    """

    def __init__(self, n_fields: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = -(-n_fields // reduction)  # ceil: a side with few fields keeps >= 1 unit
        self.excite = nn.Sequential(
            nn.Linear(n_fields, hidden), nn.ReLU(), nn.Linear(hidden, n_fields), nn.Sigmoid()
        )
        # field means start near 0, so with a random bias a ReLU fed by 2-5 fields can start
        # (and stay) dead; a small positive bias keeps every unit alive at the start
        nn.init.constant_(self.excite[0].bias, 0.1)

    def weights(self, e: torch.Tensor) -> torch.Tensor:
        """[batch, n_fields, dim] -> [batch, n_fields] field weights in (0, 1)."""
        return self.excite(e.mean(-1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e * self.weights(e).unsqueeze(-1)


def fm_interaction(e: torch.Tensor) -> torch.Tensor:
    """Second-order FM interaction vector: sum_{i<j} e_i * e_j = ((sum e)^2 - sum e^2) / 2.

    [batch, n_fields, dim] -> [batch, dim] (Rendle, ICDM 2010: linear time in the fields).
    """
    return 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1))


class CrossNetwork(nn.Module):
    """DCN-V2 cross layers (Wang et al., WWW 2021): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, n_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class HistoryPool(nn.Module):
    """The user's recent items -> one [batch, dim] field, from the item tower's id embeddings.

    `history` is [batch, length] item ids, most recent last (0 = padding, ignored). mean: the
    average of the present items' embeddings; attention: softmax over the items of
    <embedding, query> / sqrt(dim), the query a linear map of the user's other field embeddings
    (a two-tower user side never sees the target item, so the target cannot be the query).
    `decay` > 0 adds a recency prior: the item `a` steps before the most recent one (a = 0 for
    the last column) has its weight multiplied by exp(-a / decay), before normalising (mean) or
    inside the softmax (attention). A user with no history gets zeros.
    """

    def __init__(self, dim: int, pooling: str = "mean", decay: float = 0.0) -> None:
        super().__init__()
        if pooling not in ("mean", "attention"):  # (transformer: models/sequence.py)
            raise ConfigError(f"model.history_pooling: {pooling!r} not in ('mean', 'attention')")
        if decay < 0:
            raise ConfigError(f"model.history_decay must be >= 0 (0 = off), got {decay}")
        self.pooling = pooling
        self.decay = decay
        self.query = nn.Linear(dim, dim) if pooling == "attention" else None

    def forward(
        self, history: torch.Tensor, table: nn.Embedding, context: torch.Tensor
    ) -> torch.Tensor:
        h = table(history)
        mask = history > 0
        # log of each column's recency weight (right-aligned: the last column is the latest)
        age = torch.arange(history.shape[1] - 1, -1, -1, device=h.device, dtype=h.dtype)
        log_recency = -age / self.decay if self.decay > 0 else torch.zeros_like(age)
        if self.query is None:
            w = mask.to(h.dtype) * log_recency.exp()
            # the latest item weighs 1, so a non-empty history sums to >= 1
            return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-30)
        q = self.query(context.mean(1))
        scores = (h @ q.unsqueeze(-1)).squeeze(-1) / h.shape[-1] ** 0.5 + log_recency
        w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        # an empty history makes every score -inf and softmax NaN: those rows pool to zeros
        w = torch.nan_to_num(w, nan=0.0)
        return (h * w.unsqueeze(-1)).sum(1)
