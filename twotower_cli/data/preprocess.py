"""Raw tables -> encoded feature tables and a split of positives (`twotower preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_cli.data.split import per_user_split
from twotower_cli.data.tables import Encoded, RawData, encode_side, encode_values
from twotower_cli.errors import TwoTowerError


@dataclass
class SplitSettings:
    test_fraction: float = 0.2
    valid_fraction: float = 0.2
    min_positives: int = 5


def encode(raw: RawData) -> Encoded:
    users, user_vocabs, user_specs = encode_side(raw.users, "user_id", raw.user_fields, "user")
    items, item_vocabs, item_specs = encode_side(raw.items, "item_id", raw.item_fields, "item")
    return Encoded(
        users=users,
        items=items,
        vocabs={"user": user_vocabs, "item": item_vocabs},
        schema={"user": user_specs, "item": item_specs},
    )


def encode_interactions(
    raw: RawData, enc: Encoded, label: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Positives (label > 0) with dense user/item ids; rows with unknown ids dropped, counted."""
    inter = raw.interactions
    if label not in inter.columns:
        raise TwoTowerError(f"interactions: no label column {label!r}")
    frame = pd.DataFrame(
        {
            "user": encode_values(inter["user_id"], enc.vocabs["user"]["user"]),
            "item": encode_values(inter["item_id"], enc.vocabs["item"]["item"]),
            "timestamp": inter["timestamp"].to_numpy(np.int64),
        }
    )
    for col in inter.columns.difference(["user_id", "item_id", "timestamp"]):
        frame[col] = inter[col].to_numpy()
    known = (frame["user"] > 0) & (frame["item"] > 0)
    counts = {"interactions": len(frame), "dropped_unknown_id": int((~known).sum())}
    frame = frame[known & (frame[label] > 0)].reset_index(drop=True)
    counts["positives"] = len(frame)
    return frame, counts


def preprocess(
    raw: RawData, label: str, split: SplitSettings
) -> tuple[Encoded, dict[str, pd.DataFrame], dict[str, int]]:
    """Encode features, keep positives, split them; return tables, splits and row counts."""
    enc = encode(raw)
    positives, counts = encode_interactions(raw, enc, label)
    parts = per_user_split(
        positives, split.test_fraction, split.valid_fraction, split.min_positives
    )
    if parts["test"].empty:
        raise TwoTowerError(
            f"split leaves no test users: no user has >= {split.min_positives} positives"
        )
    counts.update({name: len(df) for name, df in parts.items()})
    counts["test_users"] = int(parts["test"]["user"].nunique())
    return enc, parts, {**raw.counts, **counts}
