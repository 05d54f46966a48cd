"""`fit_on=train+valid`: the refit of a configuration picked on validation. Its sample holds
the training and validation positives (in a dir of its own), training runs every epoch with no
validation and keeps the last one's weights, and a bad value is a one-line error."""

from __future__ import annotations

import pandas as pd
import torch

from twotower_cli.pipeline.tune import refit_epochs
from twotower_cli.training import fitting


def test_refit_epochs_are_the_rounded_mean_best_epoch():
    assert refit_epochs([10]) == 10
    assert refit_epochs([9, 10, 12]) == 10  # 10.33
    assert refit_epochs([9, 12, 12]) == 11  # 11.0
    assert refit_epochs([1, 2]) == 2  # 1.5: round half to even
    assert refit_epochs([0]) == 1


def test_items_as_trained_hide_the_ids_of_items_with_no_training_positive(tmp_path):
    # 4 items (row 0 is padding); the training rows hold items 1, 1 and 3: under
    # item_id_dropout > 0 items 2 and 4 are unknown (id 0) to the tower, as in training
    items = {"item": torch.arange(5), "genre": torch.tensor([0, 1, 2, 1, 2])}
    rows = [pd.DataFrame({"item": [1, 1]}), pd.DataFrame({"item": [3]})]
    trained = fitting.items_as_trained(items, tmp_path, 0.1, "train", 4, rows)
    assert trained["item"].tolist() == [0, 1, 0, 3, 0]
    assert trained["genre"] is items["genre"]
    # no dropout: every id as it is, and no split is read (tmp_path holds none)
    assert fitting.items_as_trained(items, tmp_path, 0.0, "train", 4) is items
