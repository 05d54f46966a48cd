"""Section `ann` of the benchmark (`python -m bench.run --sections ann`): approximate
nearest-neighbour indexes on a large catalogue: build time, memory, queries per second and
recall@k of faiss factory strings against exact search, on the item and user vectors of a
model trained on a million items (`ann_model`, `trained_vectors`) or, with `--ann-source
clustered`, on generated unit vectors around cluster centres."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench import gpu, log
from bench.sizes import PLAIN_DSSM, Sizes
from bench.timer import alternate
from twotower_cli.core.keys import is_member
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.retrieval.search import build_index, exact_top_unseen, set_search_params

# clustered vectors: unit vectors around N_CENTRES random centres with noise SPREAD per
# dimension: the noise (norm ~7.2) nearly matches the centre (norm ~8), so neighbour lists cross
# clusters (at 0.8 IVF reached recall 0.9998 with 4 probes: too easy; at 1.0, 0.5: hardly
# clustered)
N_CENTRES, SPREAD = 1000, 0.9


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
    rounds = alternate(repeats, {
        "faiss": lambda r: flat.search(queries, k),
        "twotower": lambda r: exact_top_unseen(items, queries, none, k, len(items))})  # fmt: skip
    return {side: rounds.rate(side, len(queries)) for side in rounds.seconds}


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k (ids; -1 = nothing, never a hit)."""
    found, truth = found[:, :k], truth[:, :k]
    width = int(max(found.max(initial=0), truth.max(initial=0))) + 2
    rows = np.arange(len(found))[:, None] * width
    true_keys = np.sort((rows + truth + 1)[truth >= 0])
    keys = rows + found + 1
    hits = (found >= 0) & is_member(keys, true_keys)
    return float(hits.sum() / (len(found) * k))


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
            # index=index: bound now, the loop's `del index` comes later
            rounds = alternate(
                repeats, {"search": lambda r, index=index: index.search(queries, k)}
            )
            _, I = rounds.results["search"][-1]
            rows.append({"index": factory, "param": value, "build_s": build_s,
                         "recall": recall_at(I, truth, k), "bytes": size,
                         "qps": rounds.rate("search", len(queries))})  # fmt: skip
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


def ann_model(sizes: Sizes, out_dir: Path, cache_dir: str, threads: int) -> Path:
    """`twotower run dataset=synthetic` at ann_items items, one epoch, sparse embeddings (a
    subprocess; a rerun skips the stages that are current). Returns its embed dir."""
    run_out = out_dir / "ann-model"
    overrides = ["dataset=synthetic", f"dataset.load.n_items={sizes.ann_items}",
                 f"dataset.load.n_users={sizes.ann_users}",
                 f"dataset.load.n_interactions={sizes.ann_interactions}",
                 f"dataset.load.n_clusters={sizes.ann_clusters}",
                 f"dataset.load.cache_dir={cache_dir}", "train.epochs=1", "train.refit=false",
                 *PLAIN_DSSM,  # the DSSM the bench has always timed
                 "train.sparse_embeddings=true", f"threads={threads}",
                 f"paths.out={run_out}"]  # fmt: skip
    log(f"ann: twotower run {' '.join(overrides)}")
    script = Path(sys.executable).with_name("twotower")
    subprocess.run([str(script), "run", *overrides], check=True, stdout=subprocess.DEVNULL)
    return Layout.named(run_out, "synthetic", "inbatch", "dssm").embed


def section(sizes: Sizes, source: str, embed_dir: Path | None = None, k: int = 50,
            recall_bar: float = 0.95, device: str = "cpu") -> tuple[dict, list]:  # fmt: skip
    """ANN indexes against exact search. source "trained": the item vectors of embed_dir
    (a trained model's catalogue), queries = its user vectors; "clustered": generated unit
    vectors around N_CENTRES centres (the earlier, easier data). Returns bench.json's keys and
    the sweep's rows (bench_ann.json)."""
    rng = np.random.default_rng(0)
    if source == "trained":
        items, queries = trained_vectors(embed_dir, sizes.ann_queries)
    else:
        # items and queries (users) share the interest centres
        centres = rng.standard_normal((N_CENTRES, 64)).astype(np.float32)
        items = clustered_vectors(sizes.ann_items, centres, SPREAD, rng)
        queries = clustered_vectors(sizes.ann_queries, centres, SPREAD, rng)
    log(f"ann: {len(items)} items, {len(queries)} queries ({source})")
    extra = {}
    if device != "cpu":  # exact search on the device, batched over every query
        none = np.zeros(0, np.int64)
        rounds = alternate(sizes.repeats, {"exact": lambda r: gpu.exact_top(
            items, queries, none, k, len(items), device)}, device=device)  # fmt: skip
        extra["ann_device_exact_qps"] = rounds.rate("exact", len(queries))
        log(f"ann: exact search on {device}: {extra['ann_device_exact_qps']:.0f} q/s")
    rows = sweep(items, queries, sizes.ann_candidates, k, sizes.repeats, log=log)
    best = best_meeting(rows, recall_bar)
    exact = rows[0]["exact_qps"]
    out = {"ann_source": source, "ann_items": len(items), "ann_queries": len(queries),
           "ann_dim": int(items.shape[1]), "ann_exact": rows[0]["index"],
           "ann_exact_qps": rows[0]["qps"], "ann_flat_qps": exact["faiss"],
           "ann_twotower_exact_qps": exact["twotower"],
           "ann_exact_mib": rows[0]["bytes"] / 2**20, **extra}  # fmt: skip
    for r in rows[1:]:
        key = f"ann/{r['index']}/{r['param']}"
        out.update({f"{key}/recall@{k}": r["recall"], f"{key}/qps": r["qps"],
                    f"{key}/build_s": r["build_s"], f"{key}/mib": r["bytes"] / 2**20})  # fmt: skip
    if best is not None:
        out.update({f"ann_recall@{k}": best["recall"], "ann_qps_ratio": best["qps_ratio"],
                    "ann_index": f"{best['index']} @ {best['param']}",
                    "ann_index_mib": best["bytes"] / 2**20})  # fmt: skip
    return out, rows
