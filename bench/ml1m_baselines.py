"""RecBole's ML-1M baselines against twotower's on `protocol=recbole` (docs/published.md).

    python -m bench.ml1m_baselines outputs/ml1m-recbole/preprocess

after `twotower preprocess dataset=ml1m protocol=recbole`. Prints, on the test split:
EASE at RecBole's published lambda (1000) and at the lambda twotower picks on validation
Recall@10, each fit on train (RecBole's trainer) and on train + valid (twotower's refit);
popularity counted on train and on train + valid; and RecBole 1.2.1's `Pop` simulated.

RecBole's Pop (recbole/model/general_recommender/pop.py) counts with
`item_cnt[item, :] = item_cnt[item, :] + 1` per training batch: an advanced-index assignment,
so an item repeated in a batch is counted once, and `item` holds the batch's sampled negatives
too (Pop is POINTWISE with `train_neg_sample_args` uniform 1: 2,048 positives + 2,048 uniform
negatives per batch of 4,096, one epoch). Its score is the number of batches an item appears
in, which saturates at the number of batches for every popular item. The simulation draws the
batches with numpy (not RecBole's torch stream), so it gives a range over seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from twotower_cli.artifacts.store import read_manifest, read_split
from twotower_cli.retrieval.baselines import ease_select, ease_top_unseen, ease_weights, gram
from twotower_cli.retrieval.metrics import ranking_metrics
from twotower_cli.retrieval.search import EvalSet, evaluate_ranked, popularity_ranking

NAMES = ("recall", "mrr", "ndcg", "hit_rate", "precision")
LAMBDAS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)


def _row(name: str, m: dict, k: int = 10) -> str:
    return f"| {name} | " + " | ".join(f"{m[f'{n}@{k}']:.4f}" for n in NAMES) + " |"


def recbole_pop_counts(items: np.ndarray, n_items: int, batch: int,
                       rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Per item id (index 0 unused): the training batches it appears in, as RecBole's Pop
    counts them (positives shuffled, one uniform negative each, repeats in a batch once)."""
    order = rng.permutation(len(items))
    cnt = np.zeros(n_items + 1, np.int64)
    for s in range(0, len(items), batch):
        pos = items[order[s : s + batch]]
        neg = rng.integers(1, n_items + 1, len(pos))
        cnt[np.unique(np.concatenate([pos, neg]))] += 1
    return cnt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prep_dir")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.time()
    n_items = read_manifest(args.prep_dir)["figures"]["n_items"]
    train, valid, test = (read_split(args.prep_dir, s, ["user", "item"]) for s in
                          ("train", "valid", "test"))  # fmt: skip
    seen = pd.concat([train, valid])
    ev = EvalSet.build(test, seen, n_items)
    depth = 10 + ev.max_exclude
    print("| ranking | " + " | ".join(f"{n}@10" for n in NAMES) + " |")
    print("|---" * (len(NAMES) + 1) + "|")
    for fit, rows in (("train", train), ("train+valid", seen)):
        counts = np.bincount(rows["item"], minlength=n_items + 1)[1:]
        ranked = popularity_ranking(counts, len(ev.users), depth)
        print(_row(f"popularity, counts of {fit}", evaluate_ranked(ranked, ev, [10], n_items)))
    lam, scores = ease_select(train, valid, n_items, list(LAMBDAS), 10)
    for lam_ in sorted({lam, 1000.0}):
        for fit, rows in (("train", train), ("train+valid", seen)):
            B = ease_weights(gram(rows, n_items), lam_)
            top = ease_top_unseen(B, rows, ev, 10, n_items)
            m = ranking_metrics(top, ev.truth, ev.n_truth, [10], n_items)
            print(_row(f"EASE lambda {lam_:g}, fit on {fit}", m))
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        cnt = recbole_pop_counts(train["item"].to_numpy(), n_items, 2048, rng)
        tied = f"{(cnt == cnt.max()).sum()} items tied at {cnt.max()} batches"
        # ties as popularity_ranking breaks them (by id), then in a random order
        for ties, key in (("by id", cnt[1:]), ("at random", cnt[1:] + rng.random(n_items) / 2)):
            ranked = popularity_ranking(key, len(ev.users), depth)
            m = evaluate_ranked(ranked, ev, [10], n_items)
            print(_row(f"RecBole Pop simulated, seed {seed}, ties {ties} ({tied})", m))
    print(f"\nvalidation Recall@10 by EASE lambda: "
          f"{ {k: round(v, 4) for k, v in scores.items()} }; picked {lam:g}; "
          f"{time.time() - t:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
