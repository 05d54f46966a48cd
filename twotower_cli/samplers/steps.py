"""The samplers' per-batch work at train time (`Sampler.batch_fn`): the logQ of every column,
shared uniform or catalogue negatives, the streaming frequency estimate. The one sampler module
that imports torch: `batch_fn` imports it when training asks, so `twotower sample` never loads
torch (cli.run_stage routes it to pipeline/prep.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from twotower_cli.training.losses import StreamingFrequency

Batch = dict[str, torch.Tensor]
BatchFn = Callable[[Batch], Batch]


class BatchStep:
    """A sampler's per-batch work (`fn`) with the state it carries from batch to batch (the
    streaming frequency estimate, the uniform draws' generator), which a resumed training run
    restores (trainer.py)."""

    def __init__(self, fn: BatchFn, streaming: StreamingFrequency | None = None,
                 gen: torch.Generator | None = None) -> None:  # fmt: skip
        self.fn, self.streaming, self.gen = fn, streaming, gen

    def __call__(self, batch: Batch) -> Batch:
        return self.fn(batch)

    def state_dict(self) -> dict:
        return {"streaming": self.streaming.state_dict() if self.streaming else None,
                "gen": self.gen.get_state() if self.gen is not None else None}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self.streaming is not None:
            self.streaming.load_state_dict(state["streaming"])
        if self.gen is not None:
            self.gen.set_state(state["gen"])


def streaming_estimate(item_log_q: torch.Tensor, logq: str, alpha: float):
    """Yi et al.'s streaming estimate of Q over the catalogue for logq=streaming, else None."""
    return StreamingFrequency(len(item_log_q), alpha=alpha) if logq == "streaming" else None


def in_batch_log_q(item_log_q: torch.Tensor, streaming: StreamingFrequency | None) -> BatchStep:
    """In-batch: every positive of the batch is also a negative column; its expected count
    among a batch of B draws is B * Q(item) (Q exact, or the streaming estimate)."""

    def add_log_q(batch: Batch) -> Batch:
        item = batch["item"]
        if streaming is not None:
            log_q = streaming.update(item).log_prob(item)
        else:
            log_q = item_log_q[item] + float(np.log(len(item)))
        return {**batch, "log_q": log_q}

    return BatchStep(add_log_q, streaming)


def mixed(item_log_q: torch.Tensor, n_uniform: int, logq: str,
          streaming: StreamingFrequency | None, seed: int) -> BatchStep:  # fmt: skip
    """The batch's positives plus `n_uniform` shared uniform items; each column's logQ is its
    expected count under the mixture, B * Q(item) + n_uniform / n_items (MixedSampler)."""
    n_items = len(item_log_q) - 1
    gen = torch.Generator().manual_seed(seed)
    log_uniform = float(np.log(n_uniform / n_items))

    def add_uniform(batch: Batch) -> Batch:
        item = batch["item"]
        neg = torch.randint(1, n_items + 1, (n_uniform,), generator=gen)
        neg = neg.to(item.device)
        out = {**batch, "neg": neg}
        if logq == "off":
            return out
        if streaming is not None:
            streaming.update(item)
            count = lambda ids: streaming.log_prob(ids)  # noqa: E731
        else:
            count = lambda ids: item_log_q[ids] + float(np.log(len(item)))  # noqa: E731
        mix = lambda ids: torch.logaddexp(count(ids), torch.tensor(log_uniform))  # noqa: E731
        return {**out, "log_q": mix(item), "neg_log_q": mix(neg)}

    return BatchStep(add_uniform, streaming, gen)


def explicit_log_q(item_log_q: torch.Tensor, n_neg: int) -> BatchFn:
    """Explicit negatives: Q is the drawn negatives' item frequency, n_neg draws per row."""
    log_n = float(np.log(n_neg))

    def add_log_q(batch: Batch) -> Batch:
        log_q = item_log_q[batch["item"]] + log_n
        return {**batch, "log_q": log_q, "neg_log_q": item_log_q[batch["neg"]] + log_n}

    return add_log_q


def uniform(item_log_q: torch.Tensor, n_negatives: int, seed: int) -> BatchStep:
    """`n_negatives` catalogue items drawn uniformly per batch, shared by every row."""
    n_items = len(item_log_q) - 1
    gen = torch.Generator().manual_seed(seed)

    def add_uniform(batch: Batch) -> Batch:
        neg = torch.randint(1, n_items + 1, (n_negatives,), generator=gen)
        return {**batch, "neg": neg.to(batch["item"].device)}

    return BatchStep(add_uniform, None, gen)


def catalogue(item_log_q: torch.Tensor) -> BatchStep:
    """Every catalogue item as a shared negative of every row (a full softmax)."""
    items = torch.arange(1, len(item_log_q))

    def add_catalogue(batch: Batch) -> Batch:
        return {**batch, "neg": items.to(batch["item"].device)}

    return BatchStep(add_catalogue)
