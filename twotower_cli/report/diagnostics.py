"""What a finished run's rankings look like beyond the headline metrics (`twotower report`):
recall by item popularity bucket (head/torso/tail) and by user activity bucket, the share of
recommendations each bucket gets, catalogue coverage at every cut-off, and the scores of held-out
positives against random items. Everything is recomputed from the run's artifacts (preprocess
splits, embed vectors, faiss index) with the evaluation protocol of `twotower evaluate`, for the
model and for the popularity baseline, vectorised over users.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from twotower_cli.artifacts.store import (
    MANIFEST,
    check_chain,
    iter_seen,
    read_manifest,
    read_split,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import is_member, pair_keys, sorted_unique
from twotower_cli.core.layout import Layout
from twotower_cli.retrieval.evaluation import scored_users
from twotower_cli.retrieval.pools import item_counts
from twotower_cli.retrieval.search import (
    EvalSet,
    index_top_unseen,
    popularity_ranking,
    set_search_params,
    subset_ids,
    top_unseen,
)

STAGES = ("train", "embed", "index", "evaluate")
STAGE_ORDER = ("preprocess", "sample", "train", "embed", "index", "evaluate")
ITEM_BUCKETS = ("head", "torso", "tail")


def run_layout(root: str | Path) -> Layout:
    """A finished run's Layout from its dir (`<paths.out>/<dataset>/sample/<sampler>/<run>`),
    with the preprocess and sample dirs its train manifest names as inputs."""
    L = Layout.of_run(root)
    for stage in STAGES:
        if not (L.stage(stage) / MANIFEST).exists():
            raise TwoTowerError(
                f"{L.stage(stage)} has no finished output: `twotower run` this run first "
                "(report reads a run dir such as outputs/ml100k/sample/inbatch/dssm)"
            )
    prep, sample = (Path(p) for p in read_manifest(L.train)["inputs"][:2])
    for path in (prep, sample):
        if not (path / MANIFEST).exists():
            raise TwoTowerError(f"{path} (an input of {L.train}) has no finished output")
    # the dirs a manifest names are read only if they hold what the run was made from
    check_chain([prep, sample, L.train])
    return L.with_inputs(prep, sample)


@dataclass
class BucketSettings:
    k: int = 20
    head_share: float = 0.5
    torso_share: float = 0.8
    user_quantiles: tuple[float, ...] = (1 / 3, 2 / 3)
    random_per_positive: int = 1
    seed: int = 0

    def check(self) -> None:
        if self.k < 1:
            raise TwoTowerError(f"report.k: {self.k} must be at least 1")
        if not 0 < self.head_share < self.torso_share < 1:
            raise TwoTowerError(
                f"report.head_share, report.torso_share: {self.head_share}, {self.torso_share} "
                "must satisfy 0 < head_share < torso_share < 1"
            )
        q = np.asarray(self.user_quantiles, dtype=float)
        if len(q) == 0 or np.any(q <= 0) or np.any(q >= 1) or np.any(np.diff(q) <= 0):
            raise TwoTowerError(
                f"report.user_quantiles: {list(self.user_quantiles)} must rise within (0, 1)"
            )
        if self.random_per_positive < 1:
            raise TwoTowerError(f"report.random_per_positive: {self.random_per_positive} < 1")


@dataclass
class Diagnostics:
    """JSON-able `summary` plus the raw score samples for the histogram."""

    summary: dict
    positive_scores: np.ndarray = field(repr=False)
    random_scores: np.ndarray = field(repr=False)


def popularity_buckets(counts: np.ndarray, head_share: float, torso_share: float) -> np.ndarray:
    """Bucket per item (0 head, 1 torso, 2 tail; counts[i] = item i + 1's training count).

    Items sorted by count (most first, ties by id): an item is head while the interactions of
    the items before it hold less than `head_share` of all, torso while less than
    `torso_share`, tail after that; items never seen are tail."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    before = (np.cumsum(counts[order]) - counts[order]) / max(counts.sum(), 1.0)
    sorted_bucket = np.where(before < head_share, 0, np.where(before < torso_share, 1, 2))
    sorted_bucket[counts[order] == 0] = 2
    bucket = np.empty(len(counts), dtype=np.int64)
    bucket[order] = sorted_bucket
    return bucket


def hit_matrix(top: np.ndarray, ev: EvalSet, n_items: int) -> np.ndarray:
    """[users, k] bool: is the ranked item one of that user's held-out items."""
    rows = np.arange(len(top))[:, None]
    return (top >= 0) & is_member(pair_keys(rows, top, n_items), ev.truth)


def recall_by_item_bucket(top, ev: EvalSet, bucket: np.ndarray, n_items: int) -> dict:
    """Per bucket: the share of held-out (user, item) pairs found in the top-k, the number of
    such pairs and the share of the top-k slots given to the bucket's items."""
    hits = hit_matrix(top, ev, n_items)
    found = is_member(ev.truth, sorted_unique(pair_keys(np.arange(len(top))[:, None], top,
                                                        n_items)[hits]))  # fmt: skip
    b = bucket[ev.truth % (n_items + 1) - 1]
    pairs = np.bincount(b, minlength=3)
    recs = np.bincount(bucket[top[top >= 0] - 1], minlength=3)
    return {
        "recall": (np.bincount(b, weights=found, minlength=3) / np.maximum(pairs, 1)).tolist(),
        "pairs": pairs.tolist(),
        "share_of_recommendations": (recs / max(recs.sum(), 1)).tolist(),
    }


def user_buckets(n_train: np.ndarray, quantiles) -> tuple[np.ndarray, list[str]]:
    """Bucket per user by training positives, cut at the `quantiles` of `n_train`; labels
    name each bucket's range."""
    edges = np.quantile(n_train, quantiles).astype(np.int64)
    edges = sorted_unique(edges)  # tied quantiles: fewer buckets
    bucket = np.searchsorted(edges, n_train, side="left")  # n <= edge 0: bucket 0, ...
    lo, hi = (int(n_train.min()), int(n_train.max())) if len(n_train) else (0, 0)
    lows = [lo, *(int(e) + 1 for e in edges)]
    highs = [*(int(e) for e in edges), hi]
    labels = [f"{lo}-{hi}" if lo < hi else f"{lo}" for lo, hi in zip(lows, highs, strict=True)]
    return bucket, labels


def recall_by_user_bucket(top, ev: EvalSet, bucket: np.ndarray, n_buckets: int,
                          n_items: int) -> dict:  # fmt: skip
    """Mean per-user recall@k and the number of users in each bucket."""
    per_user = hit_matrix(top, ev, n_items).sum(1) / ev.n_truth
    users = np.bincount(bucket, minlength=n_buckets)
    total = np.bincount(bucket, weights=per_user, minlength=n_buckets)
    return {"recall": (total / np.maximum(users, 1)).tolist(), "users": users.tolist()}


def coverage_curve(top: np.ndarray, n_items: int) -> list[float]:
    """Catalogue coverage@j for j = 1..k: the share of items in some user's top j (j = k gives
    evaluate's coverage@k)."""
    k = top.shape[1]
    ranks = np.broadcast_to(np.arange(k), top.shape)
    valid = top >= 0
    first = np.full(n_items + 1, k)
    np.minimum.at(first, top[valid], ranks[valid])
    return (np.cumsum(np.bincount(first[1:], minlength=k + 1))[:k] / n_items).tolist()


def score_samples(u, v, item_ids, ev: EvalSet, n_items: int, per_positive: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """u . v of every held-out (user, item) pair whose item is indexed, and of `per_positive`
    uniformly drawn indexed items for the same users."""
    row_of = np.full(n_items + 1, -1)
    row_of[item_ids] = np.arange(len(item_ids))
    users, items = ev.truth // (n_items + 1), row_of[ev.truth % (n_items + 1)]
    users, items = users[items >= 0], items[items >= 0]
    positive = np.einsum("ij,ij->i", u[users], v[items])
    rng = np.random.default_rng(seed)
    users = np.repeat(users, per_positive)
    random = np.einsum("ij,ij->i", u[users], v[rng.integers(0, len(item_ids), len(users))])
    return positive, random


def pairwise_auc(positive: np.ndarray, random: np.ndarray) -> float:
    """P(a positive outscores a random item), ties half, over all pairs (sorted ranks)."""
    if len(positive) == 0 or len(random) == 0:
        return float("nan")
    r = np.sort(random)
    below = np.searchsorted(r, positive, side="left")
    ties = np.searchsorted(r, positive, side="right") - below
    return float(np.mean((below + 0.5 * ties) / len(r)))


def rankings(metrics: dict) -> dict:
    """metrics.json's ranked runs (model, baselines, tasks), without its notes such as
    `baselines_skipped` and `users_sampled`."""
    return {name: m for name, m in metrics.items()
            if isinstance(m, dict) and any(k.startswith("recall@") for k in m)}  # fmt: skip


def analyse(run: Layout, settings: BucketSettings) -> Diagnostics:
    """Every number of the report's bucket, coverage and score sections for one run."""
    settings.check()
    prep, k = run.preprocess, settings.k
    n_items = read_manifest(prep)["figures"]["n_items"]
    train = read_split(prep, "train", ["user", "item"])
    # the test users evaluate scored (its eval.max_users sample, if any): the same numbers
    conf = read_manifest(run.evaluate)["config"]
    max_users = conf["eval"].get("max_users", 0)
    ev, u, _ = scored_users(prep, run.embed, n_items, max_users, conf["seed"])
    item_ids, v = np.load(run.ids("item")), np.load(run.vectors("item"))
    index = faiss.read_index(str(run.faiss_index))
    set_search_params(index, conf["index"]["nprobe"], conf["index"]["ef_search"])
    ranked = {"model": index_top_unseen(index, u, ev, k, n_items, subset_ids(item_ids, n_items))}
    counts = item_counts(iter_seen(prep, ["item"]), n_items)[1:]
    depth = min(len(item_ids), k + ev.max_exclude)
    pop = popularity_ranking(counts, len(ev.users), depth, item_ids)
    ranked["popularity"] = top_unseen(lambda rows, d: pop[rows, :d], ev, k, n_items)

    train_items = np.bincount(train["item"].to_numpy(), minlength=n_items + 1)[1:]
    ibucket = popularity_buckets(train_items, settings.head_share, settings.torso_share)
    n_train = np.bincount(train["user"].to_numpy(), minlength=int(ev.users.max(initial=0)) + 1)
    ubucket, ulabels = user_buckets(n_train[ev.users], settings.user_quantiles)
    positive, random = score_samples(u, v, item_ids, ev, n_items, settings.random_per_positive,
                                     settings.seed)  # fmt: skip
    summary = {
        "k": k,
        "users": int(len(ev.users)),
        "n_items": int(n_items),
        "item_buckets": {
            "names": list(ITEM_BUCKETS),
            "head_share": settings.head_share,
            "torso_share": settings.torso_share,
            "items": np.bincount(ibucket, minlength=3).tolist(),
            "train_share": (
                np.bincount(ibucket, weights=train_items, minlength=3) / max(train_items.sum(), 1)
            ).tolist(),  # fmt: skip
            **{
                name: recall_by_item_bucket(top, ev, ibucket, n_items)
                for name, top in ranked.items()
            },  # fmt: skip
        },
        "user_buckets": {
            "names": ulabels,
            **{
                name: recall_by_user_bucket(top, ev, ubucket, len(ulabels), n_items)
                for name, top in ranked.items()
            },  # fmt: skip
        },
        "recall": {
            name: float(np.mean(hit_matrix(top, ev, n_items).sum(1) / ev.n_truth))
            for name, top in ranked.items()
        },  # fmt: skip
        "coverage": {
            name: {"curve": coverage_curve(top, n_items)} for name, top in ranked.items()
        },
        "scores": {
            "positives": int(len(positive)),
            "positive_mean": float(positive.mean()) if len(positive) else float("nan"),
            "random_mean": float(random.mean()) if len(random) else float("nan"),
            "auc": pairwise_auc(positive, random),
        },
    }
    return Diagnostics(summary, positive, random)


@dataclass
class RunData:
    """Everything the report reads of one run."""

    label: str
    dirs: Layout
    history: list[dict]
    metrics: dict
    manifests: dict[str, dict]
    diag: Diagnostics
    field_weights: dict | None
    tasks: dict | None

    @classmethod
    def load(cls, dirs: Layout, settings: BucketSettings, label: str = "") -> RunData:
        return cls(
            label or dirs.label,
            dirs,
            json.loads(dirs.history.read_text()),
            rankings(json.loads(dirs.metrics.read_text())),
            {s: read_manifest(dirs.stage(s)) for s in STAGE_ORDER},
            analyse(dirs, settings),
            _optional_json(dirs.model_artifact("field_weights")),
            _optional_json(dirs.model_artifact("tasks")),
        )

    @property
    def config(self) -> dict:
        return self.manifests["evaluate"]["config"]

    @property
    def ks(self) -> list[int]:
        # startswith: `"recall@" in key` also matched cold_recall@k, listing every k twice
        keys = self.metrics["model"]
        return sorted(int(key.split("@")[1]) for key in keys if key.startswith("recall@"))


def _optional_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def load_runs(run_dirs: list[str | Path], settings: BucketSettings) -> list[RunData]:
    """The runs, labelled `<sampler>/<run>`, or by their whole path where two labels clash."""
    dirs = [run_layout(d) for d in run_dirs]
    labels = [d.label for d in dirs]
    clash = len(set(labels)) < len(labels)
    return [RunData.load(d, settings, str(d.root) if clash else "") for d in dirs]
