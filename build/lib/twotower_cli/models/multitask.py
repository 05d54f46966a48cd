"""Multi-task towers (`model=multitask`): shared field embeddings, one user/item head per task.

Tasks come from the data set (`dataset.tasks`: MovieLens `watch`, `like`); each training example
carries a 0/1 label per task (`task.<name>` columns, attached by `twotower train`). The loss is a
weighted sum of per-task losses, the weights fixed (`task_weights`) or learned by homoscedastic
uncertainty (Kendall, Gal & Cipolla, CVPR 2018). Serving: one fused retrieval whose score is
sum_t w_t * sim_t(u, v), served by one inner-product index over concatenated per-task vectors,
the user's blocks scaled by w_t (`fusion_weights`); each task's block is also a retrieval of its
own, which `evaluate` scores against that task's held-out positives.
"""

from __future__ import annotations

import torch
from torch import nn

from twotower_cli.core.errors import ConfigError
from twotower_cli.models.base import TowerSettings, TwoTower, batch_rows, negative_vectors
from twotower_cli.models.blocks import MLP

WEIGHTINGS = ("fixed", "uncertainty")


def _per_task(values, tasks: list[str], key: str) -> list[float]:
    """null -> 1.0 per task; a list in task order; or a mapping task -> weight."""
    if values is None:
        return [1.0] * len(tasks)
    if isinstance(values, dict) or hasattr(values, "keys"):
        missing = [t for t in tasks if t not in values]
        if missing:
            raise ConfigError(f"model.{key}: no weight for task(s) {missing}")
        values = [values[t] for t in tasks]
    values = [float(w) for w in values]
    if len(values) != len(tasks) or any(w < 0 for w in values):
        raise ConfigError(f"model.{key}: need {len(tasks)} non-negative weights, got {values}")
    return values


class MultiTaskTower(TwoTower):
    def __init__(
        self,
        schema: dict[str, list],
        tasks: list[str] | tuple[str, ...] | None = None,
        weighting: str = "fixed",
        task_weights: list[float] | dict | None = None,
        fusion_weights: list[float] | dict | None = None,
        **tower,
    ) -> None:
        t = TowerSettings.of(tower)
        super().__init__(schema, t)
        embed_dim, hidden, out_dim, dropout = t.embed_dim, list(t.hidden), t.out_dim, t.dropout
        tasks = list(tasks or [])
        if not tasks:
            raise ConfigError("model.tasks is empty: the data set declares no `tasks` "
                             "(set dataset.tasks=[...] or model.tasks=[...])")  # fmt: skip
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"model.tasks: {tasks} has duplicates")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"model.weighting: {weighting!r} not in {WEIGHTINGS}")
        self.tasks = tuple(tasks)
        self.out_dim = out_dim
        self.weighting = weighting
        self.register_buffer("task_weights", torch.tensor(_per_task(task_weights, tasks,
                                                                    "task_weights")))  # fmt: skip
        fusion = _per_task(fusion_weights, tasks, "fusion_weights")
        if sum(fusion) <= 0:
            raise ConfigError(f"model.fusion_weights: all zero {fusion}")
        self.register_buffer("fusion_weights", torch.tensor(fusion))
        # log sigma^2 per task, learned under `uncertainty` (no parameter at all under `fixed`)
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if weighting != "fixed" else None
        n_user, n_item = self.n_user_fields * embed_dim, self.item_fields.n_fields * embed_dim
        self.user_heads = nn.ModuleDict({t: MLP(n_user, hidden, out_dim, dropout) for t in tasks})
        self.item_heads = nn.ModuleDict({t: MLP(n_item, hidden, out_dim, dropout) for t in tasks})

    def task_vectors(self, feats: dict[str, torch.Tensor], side: str) -> list[torch.Tensor]:
        """One finished vector per task, in task order."""
        if side == "user":
            x, heads = self.user_embeddings(feats).flatten(1), self.user_heads
        else:
            x, heads = self.item_embeddings(feats).flatten(1), self.item_heads
        return [self.finish(heads[t](x)) for t in self.tasks]

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = self.task_vectors(feats, "user")
        return torch.cat([w * u for w, u in zip(self.fusion_weights, blocks, strict=True)], -1)

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat(self.task_vectors(feats, "item"), dim=-1)

    def fused_score(self, user_feats: dict, item_feats: dict) -> torch.Tensor:
        """sum_t w_t * sim_t of paired rows, computed per task (what the index must reproduce)."""
        us, vs = self.task_vectors(user_feats, "user"), self.task_vectors(item_feats, "item")
        return sum(w * (u * v).sum(-1) for w, u, v in zip(self.fusion_weights, us, vs,
                                                           strict=True))  # fmt: skip

    def batch_loss(self, loss_fn, user_feats, item_feats, batch, neg_feats=None) -> torch.Tensor:
        """sum_t weight_t * loss_t. Task t trains on the rows that are its positives, with the
        sampler's negatives; a positive of another task only (a watched but not liked film for
        `like`) is left out of task t rather than made a negative."""
        us, vs = self.task_vectors(user_feats, "user"), self.task_vectors(item_feats, "item")
        negs = self.task_vectors(neg_feats, "item") if neg_feats else [None] * len(self.tasks)
        label = batch["label"]
        total = torch.zeros((), device=label.device)
        for i, t in enumerate(self.tasks):
            rows = (batch[f"task.{t}"] > 0) & (label > 0)
            if not bool(rows.any()):
                continue
            v_neg = negative_vectors(negs[i], batch) if negs[i] is not None else None
            if v_neg is not None and v_neg.dim() == 3:
                v_neg = v_neg[rows]
            loss = loss_fn(self.logit_scale, us[i][rows], vs[i][rows], v_neg,
                           batch_rows(batch, rows))  # fmt: skip
            if self.weighting == "uncertainty":
                # classification form: exp(-s) * L + s / 2, s = log sigma^2 (Kendall et al. 2018)
                total = total + torch.exp(-self.log_vars[i]) * loss + 0.5 * self.log_vars[i]
            else:
                total = total + self.task_weights[i] * loss
        return total

    def sub_retrievals(self) -> dict[str, tuple[int, int]]:
        d = self.out_dim
        return {t: (i * d, (i + 1) * d) for i, t in enumerate(self.tasks)}

    def artifacts(self, users, items) -> dict[str, object]:
        info = {
            "tasks": list(self.tasks),
            "weighting": self.weighting,
            "fusion_weights": [round(float(w), 4) for w in self.fusion_weights],
            "task_weights": [round(float(w), 4) for w in self.task_weights],
        }
        if self.weighting == "uncertainty":
            info["learned_precision"] = [
                round(float(p), 4) for p in torch.exp(-self.log_vars.detach())
            ]
        return {"tasks": info}
