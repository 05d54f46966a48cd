"""Losses: the loss decides the negatives (`twotower train loss=...`).

Temperature comes from the model's `logit_scale`. `loss: auto` follows the sampler: explicit
negatives -> bce, none -> in-batch softmax. Every loss has the signature
`loss(scale, u, v, v_neg, batch)`: u, v the [B, d] user and positive-item vectors, v_neg the
negatives' vectors ([B, n, d] per row, [m, d] shared, or None) and `batch` the dict of id and
logQ tensors described in samplers.py. logQ correction (subtract log Q from each column's logit)
and accidental-hit masking (a column holding the row's own positive is not a negative) are done
here; `StreamingFrequency` is Yi et al.'s streaming estimate of Q.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from twotower_cli.core.errors import TwoTowerError

# the exact logQ lives torch-free for the samplers; training reads it here too
from twotower_cli.training.logq import log_frequency as log_frequency

LOSSES = ("auto", "bce", "sampled_softmax", "inbatch_softmax", "full_softmax")
NEG_INF = float("-inf")


def _neg_logits(u: torch.Tensor, v_neg: torch.Tensor) -> torch.Tensor:
    """[B, n] similarities of each row's user with per-row ([B, n, d]) or shared ([m, d])
    negatives."""
    if v_neg.dim() == 3:
        return torch.einsum("bd,bnd->bn", u, v_neg)
    return u @ v_neg.T


def _expand(neg: torch.Tensor, rows: int) -> torch.Tensor:
    """Negative ids (or their logQ) as [B, n], whether per row or shared."""
    return neg if neg.dim() == 2 else neg.unsqueeze(0).expand(rows, -1)


def bce(scale: float, u, v, v_neg, batch: dict) -> torch.Tensor:
    """Pointwise binary cross-entropy (classic DSSM): label 1 for the positive, 0 for each of
    its negatives, averaged over all B * (1 + n) pairs."""
    if v_neg is None:
        raise TwoTowerError(
            "loss=bce needs explicit negatives: use sampler=random|popularity|hard"
        )
    pos = (u * v).sum(-1, keepdim=True) * scale
    logits = torch.cat([pos, _neg_logits(u, v_neg) * scale], dim=1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def sampled_softmax(scale: float, u, v, v_neg, batch: dict) -> torch.Tensor:
    """Softmax of each positive against its own (or the shared) sampled negatives, every
    column corrected by - log Q when the batch carries logQ (Jean et al. 2015; Yi et al. 2019);
    a negative equal to the row's positive is masked out."""
    if v_neg is None:
        raise TwoTowerError(
            "loss=sampled_softmax needs explicit negatives: use sampler=random|popularity|hard"
        )
    pos = (u * v).sum(-1, keepdim=True) * scale
    neg = _neg_logits(u, v_neg) * scale
    if "log_q" in batch:
        pos = pos - batch["log_q"].unsqueeze(1)
        neg = neg - _expand(batch["neg_log_q"], len(u))
    hit = _expand(batch["neg"], len(u)) == batch["item"].unsqueeze(1)
    logits = torch.cat([pos, neg.masked_fill(hit, NEG_INF)], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=u.device))


def inbatch_softmax(scale: float, u, v, v_neg, batch: dict) -> torch.Tensor:
    """Softmax of each user's positive against the batch's other positives (and the shared
    negatives of mixed sampling, when present).

    logit[i, j] = scale * <u_i, v_j> - log Q_j  (Yi et al., RecSys 2019), Q_j the expected count
    of column j's item among the negatives; a column off the diagonal that holds row i's
    positive item, or another positive of row i's user, is masked out, not a negative.
    """
    item = batch["item"]
    rows = len(u)
    shared = v_neg is not None and v_neg.dim() == 2
    # shared negatives (mixed sampling) are more columns of the same product: one matmul
    cols = torch.cat([v, v_neg]) if shared else v
    # accidental hits, as (row, column) pairs: a column holding the row's positive item (a
    # shared negative included), or another positive of the row's user
    hits = [equal_pairs(torch.cat([item, batch["neg"]]) if shared else item, rows)]
    if "user" in batch:
        hits.append(equal_pairs(batch["user"], rows))
    hit = (torch.cat([h[0] for h in hits]), torch.cat([h[1] for h in hits]))
    log_q = None
    if "log_q" in batch:
        log_q = torch.cat([batch["log_q"], batch["neg_log_q"]]) if shared else batch["log_q"]
    if v_neg is None or shared:
        return DiagonalSoftmaxLoss.apply(u * scale, cols, log_q, hit)
    # per-row negatives ([B, n, d]): extra columns of their own
    logits = (u @ v.T) * scale
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    extra = torch.einsum("bd,bnd->bn", u, v_neg) * scale
    if "neg_log_q" in batch:
        extra = extra - batch["neg_log_q"]
    # (the rows' own positives lead the columns, which under several ranks are the global batch's)
    extra = extra.masked_fill(batch["neg"] == item[:rows].unsqueeze(1), NEG_INF)
    logits = torch.cat([logits.index_put(hit, logits.new_tensor(NEG_INF)), extra], dim=1)
    return F.cross_entropy(logits, torch.arange(rows, device=u.device))


def full_softmax(scale: float, u, v, v_neg, batch: dict) -> torch.Tensor:
    """Softmax of each row over the whole catalogue (`sampler=full`): `v_neg` holds the vectors
    of items 1..n in order, so row i's class is column item_i - 1; no sampling, no logQ, and
    the catalogue's copy of the positive is its logit (v is not read)."""
    neg = batch.get("neg")
    if (
        v_neg is None
        or neg is None
        or neg.dim() != 1
        or int(neg[0]) != 1
        or int(neg[-1]) != len(neg)
    ):
        raise TwoTowerError(
            "loss=full_softmax needs every catalogue item as a negative: use sampler=full"
        )
    logits = (u * scale) @ v_neg.T
    return F.cross_entropy(logits, batch["item"] - 1)


def equal_pairs(keys: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, c) with keys[r] == keys[c], r != c and r < rows: the true entries off the diagonal of
    the [rows, len(keys)] equality matrix, found by sorting, in O(n log n + pairs) instead of a
    [rows, n] comparison (which, with the masked_fill it feeds, cost ~2 ms per step)."""
    order = torch.argsort(keys, stable=True)
    _, counts = torch.unique_consecutive(keys[order], return_counts=True)
    first = (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    size = counts.repeat_interleave(counts)  # per sorted position: the size of its group
    pos = torch.nonzero(size > 1).squeeze(1)  # sorted positions whose key repeats
    each = size[pos]
    r = pos.repeat_interleave(each)
    offset = torch.arange(len(r), device=keys.device) - (
        torch.cumsum(each, 0) - each
    ).repeat_interleave(each)
    c = first[pos].repeat_interleave(each) + offset
    r, c = order[r], order[c]
    keep = (r != c) & (r < rows)
    return r[keep], c[keep]


class DiagonalSoftmaxLoss(torch.autograd.Function):
    """mean_i -log softmax(L)[i, i] for L = a @ b.T - log_q (per column), with L[hit] = -inf
    (`hit`: (rows, columns) index tensors).

    The same value and gradients as `F.cross_entropy((a @ b.T - log_q).masked_fill(mask,
    -inf), arange(B))`, computed in one [B, C] buffer: log_softmax runs in place (one fused
    pass per row, in cache), backward exponentiates it in place into the softmax, which minus
    1 on the diagonal is the logits' gradient up to the factor grad / B, applied to the two
    [B, d] and [C, d] products instead of the [B, C] buffer. The autograd chain of matmul,
    subtract, masked_fill and log_softmax makes ~12 passes over the [B, C] logits; this makes 3
    besides the three products (docs/bench.md). Backward reuses the saved buffer, so the graph
    cannot be backpropagated twice (`retain_graph=True` raises).
    """

    @staticmethod
    def forward(ctx, a, b, log_q, hit):
        logits = a @ b.T
        if log_q is not None:
            logits.sub_(log_q)  # (an addmm with the broadcast log_q was slower)
        logits.index_put_(hit, logits.new_tensor(NEG_INF))
        log_probs = torch._log_softmax(logits, 1, False, out=logits)
        ctx.save_for_backward(a, b, log_probs)
        return -log_probs.diagonal().mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b, log_probs = ctx.saved_tensors
        # d loss / d logits = (softmax - onehot(diagonal)) * grad / B, its factor applied last
        delta = log_probs.exp_()
        delta.diagonal().sub_(1.0)
        factor = grad / len(a)
        grad_a = (delta @ b).mul_(factor) if ctx.needs_input_grad[0] else None
        # (a.T @ delta).T: a transposed [B, C] operand made mm copy it (~2 ms at batch 1024)
        grad_b = (a.T @ delta).T.mul_(factor) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


def resolve(loss: str, sampler_loss: str):
    """The loss function for a config value (`auto` takes the sampler's) and its name."""
    if loss not in LOSSES:
        raise TwoTowerError(f"loss: {loss!r} not in {LOSSES}")
    name = sampler_loss if loss == "auto" else loss
    fns = {"bce": bce, "sampled_softmax": sampled_softmax, "inbatch_softmax": inbatch_softmax,
           "full_softmax": full_softmax}  # fmt: skip
    return fns[name], name


class StreamingFrequency:
    """Yi et al. (RecSys 2019), Algorithm 2: per hash bucket, the step it was last seen (A) and
    a moving average of the gap between sightings (B); B estimates 1 / P(item in a batch).

    Items are dense ids, so the default hash is the identity modulo `n_buckets`. A bucket's
    first sighting at step t takes t + 1 (the gap since the stream began) as its first gap.
    """

    def __init__(self, n_buckets: int, alpha: float = 0.05) -> None:
        if not 0.0 < alpha <= 1.0:
            raise TwoTowerError(f"sampler.alpha must be in (0, 1], got {alpha}")
        self.n_buckets = n_buckets
        self.alpha = alpha
        self.step = 0
        self.last = torch.full((n_buckets,), -1, dtype=torch.long)
        self.gap = torch.ones(n_buckets, dtype=torch.float64)

    def update(self, items: torch.Tensor) -> StreamingFrequency:
        """Record one batch (each distinct bucket once), then advance the step."""
        h = torch.unique(items.cpu() % self.n_buckets)
        last = self.last[h]
        gap = (self.step - last).to(torch.float64)
        first = last < 0
        gap[first] = float(self.step + 1)
        self.gap[h] = torch.where(first, gap, (1 - self.alpha) * self.gap[h] + self.alpha * gap)
        self.last[h] = self.step
        self.step += 1
        return self

    def state_dict(self) -> dict:
        return {"step": self.step, "last": self.last.clone(), "gap": self.gap.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.last, self.gap = int(state["step"]), state["last"], state["gap"]

    def prob(self, items: torch.Tensor) -> torch.Tensor:
        """Estimated probability that each item appears in a batch."""
        return (1.0 / self.gap[items.cpu() % self.n_buckets]).to(torch.float32)

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        return torch.log(self.prob(items)).to(items.device)
