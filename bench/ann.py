"""Approximate nearest-neighbour indexes on a large catalogue (`make bench`, section `ann`):
build time, queries per second and recall@k of faiss factory strings against exact search."""

from __future__ import annotations

import time

import faiss
import numpy as np

from twotower_cli.keys import is_member
from twotower_cli.retrieval import build_index, exact_top_unseen, set_search_params


def clustered_vectors(
    n: int, centres: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit vectors around the given cluster centres: the shape of trained item embeddings
    (interest clusters), unlike uniform noise, on which no index can beat a scan."""
    n_clusters, dim = centres.shape
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 262_144):  # in blocks: bounded temporary memory
        m = min(n, s + 262_144) - s
        x = centres[rng.integers(0, n_clusters, m)]
        x += spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k (ids; -1 = nothing, never a hit)."""
    found, truth = found[:, :k], truth[:, :k]
    width = int(max(found.max(initial=0), truth.max(initial=0))) + 2
    rows = np.arange(len(found))[:, None] * width
    true_keys = np.sort((rows + truth + 1)[truth >= 0])
    keys = rows + found + 1
    hits = (found >= 0) & is_member(keys, true_keys)
    return float(hits.sum() / (len(found) * k))


def timed_search(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    _, I = index.search(queries, k)
    return time.perf_counter() - start, I


def sweep(
    items: np.ndarray,
    queries: np.ndarray,
    candidates: dict[str, list[int]],
    k: int,
    repeats: int,
    flat_slice: int = 1000,
    log=print,
) -> list[dict]:
    """Flat (exact) and each factory string at each search setting (nprobe for IVF, efSearch
    for HNSW); rates are medians of `repeats`. The truth comes from twotower's exact search
    (retrieval.exact_top_unseen, ~3x faster than faiss Flat here); faiss Flat, which takes
    minutes for 10,000 queries on a million items, is timed on the first `flat_slice` queries
    before and after each index, so its rate is a median taken side by side too."""
    truth = exact_top_unseen(items, queries, np.zeros(0, np.int64), k, len(items)) - 1
    rows = []
    start = time.perf_counter()
    flat = build_index(items, "Flat")
    flat_build = time.perf_counter() - start
    part = queries[:flat_slice]
    flat_qps = [len(part) / timed_search(flat, part, k)[0]]
    rows.append({"index": "Flat", "param": "", "build_s": flat_build, "recall": 1.0})
    log(f"ann: Flat {flat_qps[0]:.0f} q/s")
    for factory, settings in candidates.items():
        start = time.perf_counter()
        index = build_index(items, factory)
        build_s = time.perf_counter() - start
        log(f"ann: {factory} built in {build_s:.1f}s")
        for value in settings:
            set_search_params(index, value, value)
            times = []
            for _ in range(repeats):
                seconds, I = timed_search(index, queries, k)
                times.append(seconds)
            rows.append({"index": factory, "param": value, "build_s": build_s,
                         "recall": recall_at(I, truth, k),
                         "qps": len(queries) / float(np.median(times))})  # fmt: skip
            log(f"ann: {factory} @ {value}: recall@{k} {rows[-1]['recall']:.4f}, "
                f"{rows[-1]['qps']:.0f} q/s")  # fmt: skip
        del index
        flat_qps.append(len(part) / timed_search(flat, part, k)[0])
    rows[0]["qps"] = float(np.median(flat_qps))
    for row in rows:
        row["qps_ratio"] = row["qps"] / rows[0]["qps"]
    return rows


def best_meeting(rows: list[dict], recall_bar: float) -> dict | None:
    """The fastest approximate setting whose recall meets the bar."""
    ok = [r for r in rows if r["index"] != "Flat" and r["recall"] >= recall_bar]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)
