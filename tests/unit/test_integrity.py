"""Artifacts you can trust (issue 18): a checkpoint names only a registered tower with plain
arguments, every changed byte of an output is caught by its manifest's hash, stages read one
chain, a failed run never replaces a finished model, and one writer holds a stage dir."""

from __future__ import annotations

import pytest
import torch

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.settings import TrainSettings
from twotower_cli.training import trainer


def test_nan_loss_stops_the_training_loop():
    # one item, one user: a loss of nan from the first batch on
    model = torch.nn.Linear(1, 1)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def batch_loss(self, loss_fn, u, v, batch, neg):
            return self.lin(torch.ones(1, 1)).sum() * float("nan")

    ex = {"user": torch.tensor([1]), "item": torch.tensor([1]), "label": torch.tensor([1.0])}
    with pytest.raises(TwoTowerError, match="loss became nan"):
        trainer.train(Tower(), None, ex, {"user": torch.arange(2)}, {"item": torch.arange(2)},
                      None, 1, TrainSettings(epochs=1, batch_size=1))  # fmt: skip
