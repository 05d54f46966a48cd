"""`twotower evaluate`'s library side: the model's full-catalogue metrics from its index, the
popularity and trending baselines over the same candidates and masks, each sub-retrieval of a
multi-task model on its own task, and the table printed at the end."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from twotower_cli.artifacts.store import (
    SEEN,
    iter_seen,
    iter_split,
    read_manifest,
    read_split,
    seen_rows,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import find, sorted_unique
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.models.base import TwoTower
from twotower_cli.retrieval import pools
from twotower_cli.retrieval.baselines import BaselineSettings, baseline_metrics
from twotower_cli.retrieval.search import (
    EvalSet,
    build_index,
    evaluate_index,
    index_top_unseen,
    sample_users,
    subset_ids,
)

METRIC_NAMES = ("recall", "precision", "ndcg", "hit_rate", "coverage")  # the default table


def evaluate_run(
    index, model: TwoTower, L: Layout, ks: list[int], n_items: int,
    baselines: BaselineSettings, trending_hours: float = 24.0, max_users: int = 0, seed: int = 0,
) -> dict[str, dict]:  # fmt: skip
    """{"model": ..., "popularity": ..., "trending": ..., "task/<name>": ...} metrics on the test
    split, each user's train + validation items excluded, every ranking over the same items
    (the candidate pool when preprocess made one: every test click still counts, and
    `candidate_coverage` and `cold_recall@k` stand beside; pools.py). Trending needs a test
    period's start (temporal splits); EASE and item-KNN (baselines.py) are fit on train, their
    lambda and neighbourhood picked on validation. `max_users` > 0: every ranking over the
    same seeded sample of test users."""
    prep = L.preprocess
    item_ids = np.load(L.ids("item"))  # the index's rows (candidates or all)
    ev, u, n_test = scored_users(prep, L.embed, n_items, max_users, seed, baselines.mask_seen)
    # item counts read in batches too: never the whole log as a frame
    counts = {s: pools.item_counts(iter_split(prep, s, ["item"]), n_items) for s in SEEN}
    pool = item_ids if L.candidates.exists() else None
    test_start = read_manifest(prep)["figures"].get("test_start")
    trending = (seen_rows(prep, columns=["item", "timestamp"])
                if test_start is not None else None)  # fmt: skip
    search_ids = subset_ids(item_ids, n_items)  # None: the index holds items 1..n in order
    tops = {"model": index_top_unseen(index, u, ev, max(ks), n_items, search_ids)}
    pop_counts = sum(counts.values()) if baselines.refit else counts["train"]
    tops.update(pools.baseline_tops(pop_counts, trending, ev, max(ks), n_items, pool,
                                    test_start, trending_hours))  # fmt: skip
    if "popularity" not in baselines.names:
        tops.pop("popularity")
    cold = pools.cold_items(np.flatnonzero(counts["train"]), n_items)
    metrics = pools.score_rankings(tops, ev, ks, n_items, pool, cold)
    # the learned baselines (EASE, item-KNN), ranked over the same items
    learned_names = [n for n in baselines.names if n != "popularity"]
    learned_settings = replace(baselines, names=learned_names)
    train, valid = (read_split(prep, s, ["user", "item"]) if learned_names else None
                    for s in SEEN)  # fmt: skip
    learned, skipped = baseline_metrics(learned_settings, train, valid, ev, ks, n_items, pool)
    metrics.update(learned, **({"baselines_skipped": skipped} if skipped else {}))
    metrics.update(sub_retrieval_metrics(model, prep, L.embed, ks, n_items))
    if len(ev.users) < n_test:
        metrics["users_sampled"] = {"evaluated": len(ev.users), "of": n_test, "seed": seed}
    return metrics


def scored_users(prep_dir: Path, embed_dir: Path, n_items: int, max_users: int = 0, seed: int = 0,
                 mask_seen: bool = True) -> tuple[EvalSet, np.ndarray, int]:  # fmt: skip
    """(the EvalSet of the scored test users, their vectors, the number of test users): every
    test user, or a seeded sample of `max_users` (eval.max_users). Read in batches: the test
    pairs, the seen pairs of the scored users (masked unless not `mask_seen`); the user
    vectors memory-mapped, so only the scored users' rows are read."""
    test = read_split(prep_dir, "test", ["user", "item"])
    user_ids = np.load(embed_dir / FILES.ids("user"))
    u = np.load(embed_dir / FILES.vectors("user"), mmap_mode="r")
    if not np.array_equal(user_ids, sorted_unique(test["user"].to_numpy())):
        raise TwoTowerError(f"{embed_dir}: user vectors do not match the test users; rerun embed")
    users = sample_users(user_ids, max_users, seed)
    seen = iter_seen(prep_dir, ["user", "item"]) if mask_seen else []
    ev = EvalSet.build(test, seen, n_items, users)
    return ev, np.ascontiguousarray(u[np.searchsorted(user_ids, users)]), len(user_ids)


def sub_retrieval_metrics(model: TwoTower, prep_dir: Path, embed_dir: Path, ks: list[int],
                          n_items: int) -> dict:  # fmt: skip
    """`task/<name>` metrics for each retrieval the model names (`sub_retrievals`): an exact
    search over its columns, scored on that task's held-out positives, excluding every item
    the user has met in train + validation."""
    subs = model.sub_retrievals()
    if not subs:
        return {}
    path = prep_dir / FILES.table("tasks_test")
    if not path.exists():
        raise TwoTowerError(f"{prep_dir}: no {path.name}; rerun `twotower preprocess`")
    missing = [name for name in subs if name not in pq.read_schema(path).names]
    if missing:
        raise TwoTowerError(f"{path}: no column {missing[0]!r}")
    test = read_split(prep_dir, "tasks_test", ["user", "item", *subs])
    user_ids, u = (
        np.load(embed_dir / FILES.ids("user")),
        np.load(embed_dir / FILES.vectors("user")),
    )
    v = np.load(embed_dir / FILES.vectors("item"))
    out = {}
    for name, (a, b) in subs.items():
        ev = EvalSet.build(test[test[name] > 0], iter_seen(prep_dir, ["user", "item"], "tasks_"),
                           n_items)  # fmt: skip
        rows, found = find(user_ids, ev.users)
        if not found.all():
            raise TwoTowerError(f"{embed_dir}: user vectors miss task {name!r} users; rerun embed")
        out[f"task/{name}"] = evaluate_index(build_index(v[:, a:b], "Flat"), u[rows, a:b], ev,
                                             ks, n_items)  # fmt: skip
    return out


def format_table(metrics: dict, ks: list[int], names: list[str] | tuple = METRIC_NAMES) -> str:
    """A Markdown table: one row per metric@k (`names`: the protocol's), one column per ranked
    run (entries that are not metric dicts, such as notes, are left out)."""
    runs = [r for r, m in metrics.items() if isinstance(m, dict) and f"recall@{ks[0]}" in m]
    lines = ["| metric | " + " | ".join(map(partial(_heading, metrics), runs)) + " |",
             "|---" * (len(runs) + 1) + "|"]  # fmt: skip
    for k in ks:
        for n in names:
            cells = " | ".join(f"{metrics[r][f'{n}@{k}']:.4f}" for r in runs)
            lines.append(f"| {n}@{k} | {cells} |")
    extra = ["candidate_coverage", *(f"cold_recall@{k}" for k in ks)]  # pools.score_rankings
    for name in (n for n in extra if n in metrics[runs[0]]):
        cells = " | ".join(f"{metrics[r].get(name, float('nan')):.4f}" for r in runs)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def _heading(metrics: dict, run: str) -> str:
    """A run's column heading; a baseline fitted on part of the catalogue says on how much."""
    m = metrics[run]
    return f"{run} (top {m['items']} of {m['of']} items)" if "items" in m else run
