"""Next-item training for a sequence user tower (`model.history_pooling=transformer`,
`twotower train`, docs/sequence.md): SASRec-style, every position of a user's training sequence
predicts the item that follows it.

- examples: windows of `history_len + 1` training positives in time order (right-aligned,
  0-padded), from the sorted log in one vectorised gather (`Timeline.history`):
  `train.sequence_windows=last`, one per user, the latest (a longer history is truncated, as in
  SASRec); `all`, consecutive windows that together predict every positive. Either way a
  batch's memory is bounded by `batch_size * history_len` positions whatever the user.
- batches (`SequenceBatch`): a batch of `batch_size` sequences becomes P rows, one per position
  t that holds an item (P <= batch_size * history_len): the input is the sequence less its last
  item, the target of position t the item at t + 1. `item` (the targets), `label` and the
  sampler's logQ are per position; the user features stay per sequence (`user`, `user.history`)
  with `user.history_at` naming each position, so the encoder runs once per sequence.
- the loss is the configured one over the P rows: in-batch softmax (the other positions'
  targets are the negatives, a [P, P] buffer), sampled softmax against shared uniform
  negatives (`sampler=uniform`, a [P, n] buffer) or a full softmax over the catalogue
  (`sampler=full`, a [P, n_items] buffer; protocol=loo's default).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twotower_cli.core.errors import ConfigError
from twotower_cli.core.settings import HISTORY_AT
from twotower_cli.training.examples import HISTORY_KEY, Timeline, WrappedStep

AT_KEY = f"user.{HISTORY_AT}"


def sequence_examples(train: pd.DataFrame, n_users: int, history_len: int,
                      windows: str = "last") -> dict:  # fmt: skip
    """Per user with >= 2 training positives: `user`, `item` (the window's latest positive),
    `label` and `user.history`, history_len + 1 positives in time order, 0-padded on the left.
    windows: `last`, the user's latest history_len + 1 positives (a longer history truncated);
    `all`, windows ending at the user's latest positive, history_len positives earlier, ...,
    whose targets (all but a window's first item) cover every positive but the user's first."""
    timeline = Timeline(train, n_users)
    users = np.arange(1, n_users + 1)
    n = np.diff(timeline.start)[1:]
    per_user = np.where(n >= 2, 1, 0)
    if windows == "all":
        per_user = np.where(n >= 2, -(-(n - 1) // history_len), 0)
    elif windows != "last":
        raise ConfigError(f"train.sequence_windows: {windows!r} not in ('last', 'all')")
    users = np.repeat(users, per_user)
    k = np.arange(len(users)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    seqs = timeline.history(users, timeline.start[users + 1] - k * history_len, history_len + 1)
    return {"user": users.astype(np.int32), "item": seqs[:, -1].astype(np.int32),
            "label": np.ones(len(users), np.float32), HISTORY_KEY: seqs}  # fmt: skip


def flatten_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of sequences -> one row per predicting position (see the module docstring)."""
    seq = batch[HISTORY_KEY]
    inputs, targets = seq[:, :-1], seq[:, 1:]
    at = torch.nonzero(inputs.reshape(-1) > 0).squeeze(1)
    item = targets.reshape(-1).index_select(0, at)
    out = {k: t for k, t in batch.items() if k not in ("item", "label", HISTORY_KEY)}
    return {**out, "item": item, "label": torch.ones(len(item)), HISTORY_KEY: inputs,
            AT_KEY: at}  # fmt: skip


class SequenceBatch(WrappedStep):
    """The sampler's per-batch step (logQ, shared negatives), applied to the positions of a
    batch of sequences."""

    def expand(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return flatten_positions(batch)


def check_sequence_training(model, has_negatives: bool, tasks: tuple, nproc: int) -> None:
    """One-line errors for what next-item training does not do."""
    if has_negatives:
        raise ConfigError("model.history_pooling=transformer trains every position of a "
                          "sequence: use sampler=inbatch|mixed|uniform|full (shared negatives), "
                          "not per-example negatives")  # fmt: skip
    if tasks:
        raise ConfigError("model.history_pooling=transformer has no per-position task labels: "
                          "not with model=multitask")  # fmt: skip
    if nproc > 1:
        raise ConfigError("model.history_pooling=transformer trains in one process: set "
                          "train.nproc=1")  # fmt: skip
