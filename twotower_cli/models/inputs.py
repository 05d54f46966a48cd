"""The feature tables as tensors the towers gather batches from (`twotower train`, `embed`,
`export`): data/tables.py reads them as numpy arrays, without torch; this is where they become
tensors (shared memory, no copy)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from twotower_cli.data.tables import Field, feature_arrays, load_arrays


def as_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(values) for name, values in arrays.items()}


def feature_tensors(table: pd.DataFrame, fields: list[Field]) -> dict[str, torch.Tensor]:
    """A side's whole table as tensors indexed by id (row 0 = padding)."""
    return as_tensors(feature_arrays(table, fields))


def load_tables(prep_dir: Path) -> tuple[dict, dict, dict]:
    """(schema, user feature tensors, item feature tensors) of a preprocess output."""
    schema, users, items = load_arrays(prep_dir)
    return schema, as_tensors(users), as_tensors(items)
