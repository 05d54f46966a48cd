"""`twotower evaluate`'s library side: the model's full-catalogue metrics from its index, the
popularity baseline over the same candidates and masks, each sub-retrieval of a multi-task
model on its own task, and the table printed at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twotower_cli.artifacts import read_split, seen_rows
from twotower_cli.errors import TwoTowerError
from twotower_cli.keys import find
from twotower_cli.models.base import TwoTower
from twotower_cli.retrieval import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    popularity_ranking,
)

METRIC_NAMES = ("recall", "precision", "ndcg", "hit_rate", "coverage")


def evaluate_run(index, model: TwoTower, prep_dir: Path, embed_dir: Path, ks: list[int],
                 n_items: int) -> dict[str, dict]:  # fmt: skip
    """{"model": ..., "popularity": ..., "task/<name>": ...} metrics on the test split, each
    user's train + validation items excluded."""
    item_ids = np.load(embed_dir / "item_ids.npy")  # the index's rows (candidates or all)
    seen = seen_rows(prep_dir)
    ev = EvalSet.build(read_split(prep_dir, "test"), seen, n_items)
    user_ids, u = np.load(embed_dir / "user_ids.npy"), np.load(embed_dir / "user_vectors.npy")
    if not np.array_equal(user_ids, ev.users):
        raise TwoTowerError(f"{embed_dir}: user vectors do not match the test users; rerun embed")
    counts = np.bincount(seen["item"].to_numpy(), minlength=n_items + 1)[1:]
    depth = min(len(item_ids), max(ks) + ev.max_exclude)
    popular = popularity_ranking(counts, len(ev.users), depth, item_ids)
    metrics = {
        "model": evaluate_index(index, u, ev, ks, n_items, ids=item_ids),
        "popularity": evaluate_ranked(popular, ev, ks, n_items),
    }
    metrics.update(sub_retrieval_metrics(model, prep_dir, embed_dir, ks, n_items))
    return metrics


def sub_retrieval_metrics(model: TwoTower, prep_dir: Path, embed_dir: Path, ks: list[int],
                          n_items: int) -> dict:  # fmt: skip
    """`task/<name>` metrics for each retrieval the model names (`sub_retrievals`): an exact
    search over its columns, scored on that task's held-out positives, excluding every item
    the user has met in train + validation."""
    subs = model.sub_retrievals()
    if not subs:
        return {}
    if not (prep_dir / "tasks_test.parquet").exists():
        raise TwoTowerError(f"{prep_dir}: no tasks_test.parquet; rerun `twotower preprocess`")
    test = read_split(prep_dir, "tasks_test")
    seen = seen_rows(prep_dir, "tasks_")
    user_ids, u = np.load(embed_dir / "user_ids.npy"), np.load(embed_dir / "user_vectors.npy")
    v = np.load(embed_dir / "item_vectors.npy")
    out = {}
    for name, (a, b) in subs.items():
        if name not in test.columns:
            raise TwoTowerError(f"{prep_dir / 'tasks_test.parquet'}: no column {name!r}")
        ev = EvalSet.build(test[test[name] > 0], seen, n_items)
        rows, found = find(user_ids, ev.users)
        if not found.all():
            raise TwoTowerError(f"{embed_dir}: user vectors miss task {name!r} users; rerun embed")
        out[f"task/{name}"] = evaluate_index(build_index(v[:, a:b], "Flat"), u[rows, a:b], ev,
                                             ks, n_items)  # fmt: skip
    return out


def format_table(metrics: dict, ks: list[int]) -> str:
    """A Markdown table: one row per metric@k, one column per ranked run (entries that are not
    metric dicts, such as notes, are left out)."""
    runs = [r for r, m in metrics.items() if isinstance(m, dict) and f"recall@{ks[0]}" in m]
    lines = ["| metric | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for k in ks:
        for n in METRIC_NAMES:
            cells = " | ".join(f"{metrics[r][f'{n}@{k}']:.4f}" for r in runs)
            lines.append(f"| {n}@{k} | {cells} |")
    return "\n".join(lines)
