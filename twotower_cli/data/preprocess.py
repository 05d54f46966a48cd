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
    raw: RawData, enc: Encoded, label: str, tasks: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Positives (label > 0, or > 0 for any of `tasks`) with dense user/item ids; rows with
    unknown ids dropped, counted. `positives` counts the label's positives."""
    inter = raw.interactions
    for col in (label, *tasks):
        if col not in inter.columns:
            kind = "label" if col == label else "task"
            raise TwoTowerError(f"interactions: no {kind} column {col!r}")
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
    wanted = frame[label] > 0
    for task in tasks:
        wanted |= frame[task] > 0
    frame = frame[known & wanted].reset_index(drop=True)
    counts["positives"] = int((frame[label] > 0).sum())
    return frame, counts


def split_task_rows(
    rows: pd.DataFrame, label: str, parts: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Every row positive for some task -> `tasks_<split>`, on the label split's timeline.

    The label's positives keep their split; any other row goes, per user, to test from the
    user's first test positive's timestamp on, to validation from the first validation
    positive's, else to train, so no task's training rows come after the label's held-out ones.
    """
    first = {name: parts[name].groupby("user")["timestamp"].min() for name in ("valid", "test")}
    users = rows["user"]
    test_from = users.map(first["test"]).fillna(np.inf).to_numpy()
    valid_from = users.map(first["valid"]).fillna(np.inf).to_numpy()
    valid_from = np.minimum(valid_from, test_from)
    ts = rows["timestamp"].to_numpy()
    where = np.where(ts >= test_from, "test", np.where(ts >= valid_from, "valid", "train"))
    other = rows[(rows[label] <= 0).to_numpy()]
    where = where[(rows[label] <= 0).to_numpy()]
    return {
        f"tasks_{name}": pd.concat([parts[name], other[where == name]], ignore_index=True)
        .sort_values(["user", "timestamp", "item"], kind="stable")
        .reset_index(drop=True)
        for name in ("train", "valid", "test")
    }


def preprocess(
    raw: RawData, label: str, split: SplitSettings, tasks: tuple[str, ...] = ()
) -> tuple[Encoded, dict[str, pd.DataFrame], dict[str, int]]:
    """Encode features, keep positives, split them; return tables, splits and row counts.

    With `tasks` (multi-task labels), the splits of the label's positives are unchanged and
    `tasks_train/valid/test` add every row positive for some task (see `split_task_rows`).
    """
    enc = encode(raw)
    tasks = tuple(tasks)
    rows, counts = encode_interactions(raw, enc, label, tasks)
    positives = rows[rows[label] > 0].reset_index(drop=True) if tasks else rows
    parts = per_user_split(
        positives, split.test_fraction, split.valid_fraction, split.min_positives
    )
    if parts["test"].empty:
        raise TwoTowerError(
            f"split leaves no test users: no user has >= {split.min_positives} positives"
        )
    if tasks:
        parts.update(split_task_rows(rows, label, parts))
    counts.update({name: len(df) for name, df in parts.items()})
    counts["test_users"] = int(parts["test"]["user"].nunique())
    return enc, parts, {**raw.counts, **counts}
