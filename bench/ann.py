"""Approximate nearest-neighbour indexes on a large catalogue (`make bench`, section `ann`):
build time, memory, queries per second and recall@k of faiss factory strings against exact
search, on the item and user vectors of a trained model (`trained_vectors`) or, with
`--ann-source clustered`, on generated unit vectors around cluster centres."""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np

from twotower_cli.core.keys import is_member
from twotower_cli.core.layout import FILES
from twotower_cli.retrieval.search import build_index, exact_top_unseen, set_search_params


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


def trained_vectors(embed_dir: Path, n_queries: int, seed: int = 0):
    """(item vectors, query vectors) from `twotower embed`'s output: every item of the
    catalogue, and `n_queries` of the evaluation users' vectors drawn without replacement."""
    items = np.load(Path(embed_dir) / FILES.vectors("item"))
    users = np.load(Path(embed_dir) / FILES.vectors("user"))
    pick = np.random.default_rng(seed).choice(
        len(users), min(n_queries, len(users)), replace=False
    )
    return np.ascontiguousarray(items, np.float32), np.ascontiguousarray(users[np.sort(pick)])


def index_bytes(index) -> int:
    """The index's size as faiss serialises it: what it takes on disk and, give or take
    allocator slack, in memory."""
    return int(faiss.serialize_index(index).nbytes)


def set_params(index, value) -> None:
    """An int sets nprobe (IVF) or efSearch (HNSW); a string is faiss ParameterSpace syntax,
    e.g. "nprobe=32,k_factor_rf=4" (k_factor_rf: how many candidates the refine step re-ranks
    per wanted neighbour)."""
    if isinstance(value, str):
        faiss.ParameterSpace().set_index_parameters(index, value)
    else:
        set_search_params(index, value, value)


def exact_qps(items: np.ndarray, queries: np.ndarray, k: int, flat, repeats: int) -> dict:
    """Queries/s of the two exact searches, each batched over all `queries`: faiss Flat and
    twotower's exact_top_unseen (torch.mm in chunks + k-selection); medians of `repeats`,
    alternating."""
    none = np.zeros(0, np.int64)
    times: dict[str, list[float]] = {"faiss": [], "twotower": []}
    for r in range(repeats):
        for side in ("faiss", "twotower") if r % 2 == 0 else ("twotower", "faiss"):
            start = time.perf_counter()
            if side == "faiss":
                flat.search(queries, k)
            else:
                exact_top_unseen(items, queries, none, k, len(items))
            times[side].append(time.perf_counter() - start)
    return {side: len(queries) / float(np.median(t)) for side, t in times.items()}


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
    candidates: dict[str, list],
    k: int,
    repeats: int,
    exact_slice: int = 2000,
    log=print,
) -> list[dict]:
    """Exact search and each factory string at each search setting (an int: nprobe for IVF,
    efSearch for HNSW; a string: faiss ParameterSpace syntax); rates are medians of `repeats`
    over all queries, batched. The truth comes from twotower's exact search
    (retrieval.exact_top_unseen). The first row is the faster of the two exact searches (faiss
    Flat or twotower's), both batched over the first `exact_slice` queries, timed side by side
    before the indexes; every `qps_ratio` divides by its rate."""
    truth = exact_top_unseen(items, queries, np.zeros(0, np.int64), k, len(items)) - 1
    start = time.perf_counter()
    flat = build_index(items, "Flat")
    flat_build = time.perf_counter() - start
    rates = exact_qps(items, queries[:exact_slice], k, flat, repeats)
    best = max(rates, key=rates.get)
    rows = [{"index": "Flat" if best == "faiss" else "exact (twotower)", "param": "",
             "build_s": flat_build, "recall": 1.0, "qps": rates[best],
             "bytes": index_bytes(flat), "exact_qps": rates}]  # fmt: skip
    log(f"ann: exact search, faiss Flat {rates['faiss']:.0f} q/s, twotower "
        f"{rates['twotower']:.0f} q/s")  # fmt: skip
    del flat
    for factory, settings in candidates.items():
        start = time.perf_counter()
        index = build_index(items, factory)
        build_s = time.perf_counter() - start
        size = index_bytes(index)
        log(f"ann: {factory} built in {build_s:.1f}s, {size / 2**20:.0f} MiB")
        for value in settings:
            set_params(index, value)
            times = []
            for _ in range(repeats):
                seconds, I = timed_search(index, queries, k)
                times.append(seconds)
            rows.append({"index": factory, "param": value, "build_s": build_s,
                         "recall": recall_at(I, truth, k), "bytes": size,
                         "qps": len(queries) / float(np.median(times))})  # fmt: skip
            log(f"ann: {factory} @ {value}: recall@{k} {rows[-1]['recall']:.4f}, "
                f"{rows[-1]['qps']:.0f} q/s")  # fmt: skip
        del index
    for row in rows:
        row["qps_ratio"] = row["qps"] / rows[0]["qps"]
    return rows


def best_meeting(rows: list[dict], recall_bar: float) -> dict | None:
    """The fastest approximate setting whose recall meets the bar."""
    ok = [r for r in rows[1:] if r["recall"] >= recall_bar]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)
