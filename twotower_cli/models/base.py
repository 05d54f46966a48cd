"""What every tower variant shares: the similarity, the serving contract, the field embeddings
(with the optional user-history field) and the generic hooks the stages call.

A model returns serving vectors: `user_vectors(feats)` and `item_vectors(feats)` whose inner
product ranks exactly like the training score, so one inner-product faiss index serves it.
The training logit is that inner product times `logit_scale` (1/temperature for cosine).

Hooks with defaults, so stage code never names a concrete class:
- `batch_loss(...)`: the training loss of one batch (multi-task models sum per-task losses);
- `artifacts(users, items)`: extra JSON files saved with the run (SENet's field weights);
- `sub_retrievals()`: named column ranges of the serving vectors that are retrievals of their
  own (a multi-task model's tasks), which `evaluate` scores separately;
- `history_len` > 0: the user side reads a `history` feature ([batch, history_len] item ids);
- `sequential`: the history is a causal sequence encoder, trained next-item over every position
  (the user features then carry `history_at`, the positions that predict, docs/sequence.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from twotower_cli.core.errors import ConfigError
from twotower_cli.core.settings import HISTORY, HISTORY_AT, SIMILARITIES, TowerSettings
from twotower_cli.models.blocks import FieldEmbedding, HistoryPool, L2Normalize
from twotower_cli.models.sequence import SequenceEncoder


class TwoTower(nn.Module):
    tasks: tuple[str, ...] = ()

    def __init__(self, schema: dict[str, list], tower: TowerSettings) -> None:
        """The similarity and the field embeddings (`user_fields`, `item_fields` and, with
        `history`, a pooled history field that reads the item tower's id embeddings)."""
        super().__init__()
        if tower.similarity not in SIMILARITIES:
            raise ConfigError(f"model.similarity: {tower.similarity!r} not in {SIMILARITIES}")
        if tower.temperature <= 0:
            raise ConfigError(f"model.temperature must be > 0, got {tower.temperature}")
        self.tower = tower
        self.similarity = tower.similarity
        self.temperature = tower.temperature
        self.history_len = 0
        self.history_pool: HistoryPool | SequenceEncoder | None = None
        self.user_fields = FieldEmbedding(schema["user"], tower.embed_dim)
        self.item_fields = FieldEmbedding(schema["item"], tower.embed_dim)
        if tower.history:
            if tower.history_len < 1:
                raise ConfigError(f"model.history_len must be >= 1, got {tower.history_len}")
            if "item" not in self.item_fields.tables:
                raise ConfigError("model.history needs an item id field named 'item'")
            self.history_len = tower.history_len
            self.history_pool = history_path(tower)

    @property
    def logit_scale(self) -> float:
        return 1.0 / self.temperature if self.similarity == "cosine" else 1.0

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """A tower's raw output -> its serving vector (L2-normalised under cosine)."""
        if self.similarity != "cosine":
            return x
        # the same values; the custom backward only in training (an exporter meets plain ops)
        return L2Normalize.apply(x) if self.training else F.normalize(x, dim=-1)

    @property
    def sequential(self) -> bool:
        """True when the history is a causal sequence encoder (next-item training)."""
        return isinstance(self.history_pool, SequenceEncoder)

    @property
    def user_field_names(self) -> list[str]:
        names = [f.name for f in self.user_fields.fields]
        return names + [HISTORY] if self.history_pool is not None else names

    @property
    def n_user_fields(self) -> int:
        return len(self.user_field_names)

    def user_embeddings(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, n_user_fields, dim]: the user's fields, then the pooled history if on.
        With `history_at` (sequence training: P flat positions of the [batch, history_len]
        history) one row per position: [P, n_user_fields, dim], the position's user's fields
        beside the encoder's output there."""
        e = self.user_fields(feats)
        if self.history_pool is None:
            return e
        if HISTORY not in feats:
            raise ValueError("model.history is on but the user features carry no 'history'")
        table = self.item_fields.tables["item"]
        if HISTORY_AT in feats:
            at = feats[HISTORY_AT]
            h = self.history_pool(feats[HISTORY], table, e, at=at)
            e = e.index_select(0, torch.div(at, feats[HISTORY].shape[1], rounding_mode="floor"))
        else:
            h = self.history_pool(feats[HISTORY], table, e)
        return torch.cat([e, h.unsqueeze(1)], dim=1)

    def item_embeddings(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_fields(feats)

    # -- the serving contract -------------------------------------------------------------
    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Training logits of paired rows (u[i], v[i])."""
        return (u * v).sum(-1) * self.logit_scale

    # -- hooks the stages call on any variant ---------------------------------------------
    def batch_loss(
        self,
        loss_fn,
        user_feats: dict[str, torch.Tensor],
        item_feats: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        neg_feats: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One batch's loss. `batch` holds the examples' columns and the sampler's per-batch
        additions (see samplers.py); `neg_feats` are the features of `batch["neg"]`, flattened.
        In sequence training the rows are positions: a user's other positions' next items are
        fair negatives, so the batch's `user` (its sequences' users) masks nothing."""
        if HISTORY_AT in user_feats:
            batch = {k: t for k, t in batch.items() if k != "user"}
        u, v = self.user_vectors(user_feats), self.item_vectors(item_feats)
        v_neg = negative_vectors(self.item_vectors(neg_feats), batch) if neg_feats else None
        return loss_fn(self.logit_scale, u, v, v_neg, batch)

    def artifacts(
        self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
    ) -> dict[str, object]:
        """name -> JSON-able object, each saved as `<name>.json` next to the weights."""
        return {}

    def sub_retrievals(self) -> dict[str, tuple[int, int]]:
        """name -> [start, stop) columns of the serving vectors that rank on their own."""
        return {}


def history_path(t: TowerSettings) -> HistoryPool | SequenceEncoder:
    """The history's pooling (mean | attention) or its causal sequence encoder (transformer)."""
    if t.history_pooling == "transformer":
        return SequenceEncoder(t.embed_dim, t.history_len, t.history_layers, t.history_heads,
                               t.history_dropout)  # fmt: skip
    return HistoryPool(t.embed_dim, t.history_pooling, t.history_decay)


def negative_vectors(flat: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Vectors of the flattened `batch["neg"]` ids back in its shape: [B, n, d] or [m, d]."""
    return flat.view(*batch["neg"].shape, -1)


def batch_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch restricted to `rows`: per-row columns are indexed, shared negatives (1-d
    `neg` / `neg_log_q`, one set for every row) are kept whole."""
    shared = batch.get("neg") is not None and batch["neg"].dim() == 1
    return {k: t if shared and k in ("neg", "neg_log_q") else t[rows] for k, t in batch.items()}
