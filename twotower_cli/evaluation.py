"""`twotower evaluate`'s library side: the model's full-catalogue metrics from its index, the
popularity and trending baselines over the same candidates and masks, each sub-retrieval of a
multi-task model on its own task, and the table printed at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twotower_cli import pools
from twotower_cli.artifacts import read_manifest, read_split, seen_rows
from twotower_cli.baselines import BaselineSettings, baseline_metrics
from twotower_cli.errors import TwoTowerError
from twotower_cli.keys import find
from twotower_cli.layout import Layout
from twotower_cli.models.base import TwoTower
from twotower_cli.retrieval import EvalSet, build_index, evaluate_index, index_top_unseen

METRIC_NAMES = ("recall", "precision", "ndcg", "hit_rate", "coverage")


def evaluate_run(
    index, model: TwoTower, L: Layout, ks: list[int], n_items: int,
    baselines: BaselineSettings, trending_hours: float = 24.0,
) -> dict[str, dict]:  # fmt: skip
    """{"model": ..., "popularity": ..., "trending": ..., "task/<name>": ...} metrics on the test
    split, each user's train + validation items excluded, every ranking over the same items
    (the candidate pool when preprocess made one: every test click still counts, and
    `candidate_coverage` and `cold_recall@k` stand beside; pools.py). Trending needs a test
    period's start (temporal splits); EASE (baselines.py) is fit on train, its lambda picked on
    validation."""
    item_ids = np.load(L.ids("item"))  # the index's rows (candidates or all)
    seen = seen_rows(L.preprocess)
    ev = EvalSet.build(read_split(L.preprocess, "test"), seen, n_items)
    user_ids, u = np.load(L.ids("user")), np.load(L.vectors("user"))
    if not np.array_equal(user_ids, ev.users):
        raise TwoTowerError(f"{L.embed}: user vectors do not match the test users; rerun embed")
    test_start = read_manifest(L.preprocess)["figures"].get("test_start")
    tops = {
        "model": index_top_unseen(index, u, ev, max(ks), n_items, ids=item_ids),
        **pools.baseline_tops(seen, ev, max(ks), n_items, item_ids, test_start, trending_hours),
    }
    if "popularity" not in baselines.names:
        tops.pop("popularity")
    pool = item_ids if L.candidates.exists() else None
    train = read_split(L.preprocess, "train")
    cold = pools.cold_items(train["item"].to_numpy(), n_items)
    metrics = pools.score_rankings(tops, ev, ks, n_items, pool, cold)
    # EASE (a learned baseline) when the catalogue fits; its ranking over the same items
    ease = BaselineSettings(
        [n for n in baselines.names if n != "popularity"],
        baselines.ease_max_items,
        baselines.ease_lambdas,
        baselines.select_k,
    )
    learned, skipped = baseline_metrics(ease, train, read_split(L.preprocess, "valid"), ev, ks,
                                        n_items, item_ids)  # fmt: skip
    metrics.update(learned, **({"baselines_skipped": skipped} if skipped else {}))
    metrics.update(sub_retrieval_metrics(model, L.preprocess, L.embed, ks, n_items))
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
    extra = ["candidate_coverage", *(f"cold_recall@{k}" for k in ks)]  # pools.score_rankings
    for name in (n for n in extra if n in metrics[runs[0]]):
        cells = " | ".join(f"{metrics[r].get(name, float('nan')):.4f}" for r in runs)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)
