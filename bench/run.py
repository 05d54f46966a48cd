"""The speed and scale benchmark: `make bench` (or `python -m bench.run [--quick]`).

Sections (pick with --sections): `train` (twotower's trainer against a per-row Dataset /
DataLoader loop), `eval` (twotower's evaluation against a per-user Python loop, and its exact
search against a plain matrix multiply), `ann` (faiss indexes on the vectors of a model trained
on a million items), `scale` (the whole pipeline at growing sizes, one `twotower run`
subprocess each), `dist` (`twotower train` samples/s with train.nproc 1 and 2, one thread each,
in-batch negatives global and local) and `peers` (torch-rechub's DSSM beside twotower's
default, bench/peers.py). `--device cuda` runs train, eval and ann on a GPU (bench/gpu.py,
`make bench-gpu`). Both sides of every comparison run in this process, alternating, and the
medians of the repeats are reported.
Writes outputs/bench/bench.json (flat keys), bench.md and scale.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# isort: off
import twotower_cli  # noqa: F401  (first: sets OpenMP's spin policy before torch loads)

# isort: on
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench import ann, flops, gpu, peers, reference, report
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.data import synthetic
from twotower_cli.data.preprocess import SplitSettings, preprocess
from twotower_cli.models.dssm import DSSM
from twotower_cli.models.inputs import feature_tensors
from twotower_cli.retrieval.search import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    exact_top_unseen,
    search_chunk_rows,
)
from twotower_cli.samplers import InBatchSampler, item_log_frequency
from twotower_cli.training import losses
from twotower_cli.training.trainer import (  # noqa: E402
    TrainSettings,
    encode_all,
    gather,
    optimizers,
    train,
    user_features,
)

KS = [10, 20, 50]
# ANN vectors: unit vectors around N_CENTRES random centres with noise SPREAD per dimension:
# the noise (norm ~7.2) nearly matches the centre (norm ~8), so neighbour lists cross clusters
# (at 0.8 IVF reached recall 0.9998 with 4 probes: too easy; at 1.0, 0.5: hardly clustered)
N_CENTRES, SPREAD = 1000, 0.9
STAGES = ("preprocess", "sample", "train", "embed", "index", "evaluate")
# the profiler's names of the collectives' ops: c10d's calls and gloo's, DDP's all-reduce, and
# distributed.py's all_gather (its forward and backward wait for the peer inside them)
COLLECTIVE = re.compile(r"gloo|c10d|nccl|_AllGather|record_param_comms")


@dataclass
class Sizes:
    """How big each section runs; --quick shrinks everything to a couple of minutes."""

    data: dict = field(default_factory=lambda: {"n_users": 50_000, "n_items": 20_000,
                                                "n_interactions": 1_000_000})  # fmt: skip
    batch_size: int = 1024
    # both sides of the train comparison and the scale runs use the lazy Adam on embeddings
    sparse_embeddings: bool = True
    # 50 steps of 1024 per round (8 rounds: 410k of the 462k training positives, each used
    # once); at 20 steps the per-round validation and set-up were a quarter of our time
    train_steps: int = 50
    train_rounds: int = 8
    reference_users: int = 1000
    # ann: a DSSM trained one epoch by `twotower run dataset=synthetic` on ann_items items
    ann_items: int = 1_000_000
    ann_users: int = 20_000
    ann_interactions: int = 1_500_000
    ann_clusters: int = 200
    ann_queries: int = 10_000
    # int: nprobe (IVF) or efSearch (HNSW); str: faiss ParameterSpace settings
    ann_candidates: dict = field(
        default_factory=lambda: {
            # 8-bit scalar codes: recall@50 0.973 at nprobe 32, 21x Flat, 70 MiB (1 Dec). 4-bit
            # PQ ranks trained vectors too coarsely for its refine: 2 dimensions a code
            # (PQ32x4fs) held 0.44-0.55 at k_factor_rf 4-8 and 0.80 at 64, 1 dimension a code
            # 0.80-0.86 at 16-32, 0.947 at 64 (docs/bench.md)
            "IVF4096,SQ8": [32, 64],
            "IVF4096,PQ64x4fs,Refine(SQ8)": ["nprobe=32,k_factor_rf=32"],
            "IVF4096,Flat": [16, 32, 64],
            "HNSW32": [128, 256, 512],
        }
    )  # fmt: skip
    scale: tuple = (1_000_000, 3_000_000, 10_000_000, 100_000_000)
    scale_items: int = 50_000
    # (n_users, n_items) of a size; the others have n // 20 users and scale_items items
    scale_shapes: dict = field(default_factory=lambda: {100_000_000: (3_000_000, 500_000)})
    # the stages a size runs (default: all six)
    scale_stages: dict = field(default_factory=dict)
    # (train.valid_max_users, eval.max_users) of a size (default: every user): at 100M, an
    # exact search of 3M users over 500k items would take hours on 2 cores
    scale_users: dict = field(default_factory=lambda: {100_000_000: (20_000, 50_000)})
    scale_epochs: int = 1
    # train.max_steps of the scale runs, so the largest stays well under an hour
    scale_max_steps: int = 2000
    repeats: int = 3
    # dist: epochs per `twotower train` run (each run's rate is its median epoch)
    dist_epochs: int = 2


QUICK = Sizes(
    data={"n_users": 5000, "n_items": 3000, "n_interactions": 100_000},
    train_steps=3,
    train_rounds=4,
    reference_users=300,
    ann_items=100_000,
    ann_users=3000,
    ann_interactions=100_000,
    ann_clusters=50,
    ann_queries=2000,
    ann_candidates={
        "IVF256,SQ8": [16],
        "IVF256,PQ64x4fs,Refine(SQ8)": ["nprobe=16,k_factor_rf=16"],
        "IVF256,Flat": [8, 16],
        "HNSW32": [128],
    },  # fmt: skip
    scale=(30_000, 100_000, 300_000),
    scale_items=5000,
    scale_shapes={},
    scale_stages={},
    scale_users={},
    scale_epochs=1,
    scale_max_steps=50,
    repeats=3,
    dist_epochs=2,
)


def log(msg: str) -> None:
    print(msg, flush=True)


class Data:
    """The synthetic data set both sides of the train and eval comparisons use."""

    def __init__(self, sizes: Sizes, cache_dir: str) -> None:
        raw = synthetic.load(**sizes.data, n_clusters=20, seed=0, cache_dir=cache_dir)
        enc, parts, _ = preprocess(raw, "click", SplitSettings())
        self.schema = {s: [vars(f) for f in fs] for s, fs in enc.schema.items()}
        self.users = feature_tensors(enc.users, enc.schema["user"])
        self.items = feature_tensors(enc.items, enc.schema["item"])
        self.n_items = enc.n_items
        self.parts = parts
        train_pos = parts["train"]
        # what `twotower sample` writes for the in-batch sampler
        self.log_q = torch.from_numpy(
            item_log_frequency(train_pos["item"].to_numpy(), self.n_items)
        )
        # the plain DSSM of the bench's history (no user history, temperature 0.05)
        self.model = DSSM(self.schema, embed_dim=32, hidden=[256], out_dim=64, dropout=0.1,
                          temperature=0.05, history=False)  # fmt: skip


def bench_train(data: Data, sizes: Sizes, device: str = "cpu") -> dict:
    """Samples/s of trainer.train against reference.reference_train: same model init, loss,
    optimisers, batch size and steps. The sides alternate in `train_rounds` rounds of
    `train_steps` steps each (fresh positives every round), so both see the same machine load;
    twotower's time includes its end-of-epoch validation (200 users) and set-up every round.

    Each round also times the reference's DataLoader alone (same rows, no model): reference
    time minus that is its model step, which twotower shares, so `train_speedup_ceiling` =
    reference / (reference - loader) estimates the ratio a trainer whose data path and
    validation cost nothing would reach (separately timed parts: an estimate, not a bound)."""
    per_round = sizes.train_steps * sizes.batch_size
    rounds = sizes.train_rounds
    rng = np.random.default_rng(0)
    train_pos = data.parts["train"]
    pos = train_pos.iloc[rng.choice(len(train_pos), per_round * rounds, replace=False)]
    users, items = pos["user"].to_numpy(copy=True), pos["item"].to_numpy(copy=True)
    valid = data.parts["valid"]
    some = np.sort(valid["user"].unique())[:200]
    valid_set = EvalSet.build(valid[valid["user"].isin(some)], train_pos, data.n_items)
    settings = TrainSettings(epochs=1, batch_size=sizes.batch_size, patience=1, device=device,
                             sparse_embeddings=sizes.sparse_embeddings)  # fmt: skip
    models = {"twotower": data.model, "reference": copy.deepcopy(data.model)}
    seconds: dict[str, list[float]] = {"twotower": [], "reference": [], "loader": []}
    replay = flops.GemmReplay(
        step_gemms(data, users[: sizes.batch_size], items[: sizes.batch_size])
    )
    step_s, gemm_s = [], []  # the trainer's loop (validation and set-up excluded), the replay
    for r in range(rounds):
        part = slice(r * per_round, (r + 1) * per_round)
        examples = {"user": torch.from_numpy(users[part]), "item": torch.from_numpy(items[part]),
                    "label": torch.ones(per_round)}  # fmt: skip
        dataset = reference.RowDataset(users[part], items[part], data.users, data.items)
        for side in ("reference", "twotower") if r % 2 == 0 else ("twotower", "reference"):
            model = models[side]
            start = time.perf_counter()
            if side == "twotower":
                history = train(model, losses.inbatch_softmax, examples, data.users, data.items,
                                valid_set, data.n_items, settings,
                                InBatchSampler().batch_fn(data.log_q))  # fmt: skip
                seconds[side].append(time.perf_counter() - start)  # the replay is not ours
                step_s.append(per_round / history[0]["samples_per_s"])
                gemm_s.append(replay.run(sizes.train_steps))
            else:
                reference.reference_train(
                    model, losses.inbatch_softmax, dataset, sizes.batch_size, sizes.train_steps,
                    lambda m: optimizers(m, settings), data.log_q, r, device)  # fmt: skip
                seconds[side].append(time.perf_counter() - start)
            for table in model.modules():  # what trainer.train does on its way out
                if isinstance(table, torch.nn.Embedding):
                    table.sparse = False
        start = time.perf_counter()
        loader = DataLoader(dataset, batch_size=sizes.batch_size, shuffle=True)
        for step, _ in enumerate(loader):
            if step + 1 == sizes.train_steps:
                break
        seconds["loader"].append(time.perf_counter() - start)
        log(f"train: round {r + 1}/{rounds}: twotower {per_round / seconds['twotower'][-1]:.0f}"
            f" samples/s, reference {per_round / seconds['reference'][-1]:.0f}")  # fmt: skip
    ours, theirs = np.array(seconds["twotower"]), np.array(seconds["reference"])
    loader = np.array(seconds["loader"])
    ms = lambda t: float(np.median(t)) / sizes.train_steps * 1e3  # noqa: E731
    return {"train_samples_per_s": per_round / float(np.median(ours)),
            "train_ms_per_batch": ms(ours), "train_reference_ms_per_batch": ms(theirs),
            "train_reference_loader_ms_per_batch": ms(loader),
            "train_speedup_ceiling": float(np.median(theirs / np.maximum(theirs - loader, 1e-9))),
            "train_reference_samples_per_s": per_round / float(np.median(theirs)),
            "train_speedup": float(np.median(theirs / ours)),
            "train_speedup_total": float(theirs.sum() / ours.sum()),
            "train_rounds": rounds, "train_steps_per_round": sizes.train_steps,
            "train_batch_size": sizes.batch_size,
            "train_sparse_embeddings": sizes.sparse_embeddings,
            **gemm_fraction(replay, sizes.train_steps, step_s, gemm_s)}  # fmt: skip


def step_gemms(data: Data, users: np.ndarray, items: np.ndarray) -> list[tuple[int, int, int]]:
    """The matrix products of one training step (forward + backward, in-batch softmax with
    logQ) of a copy of the bench model on these positives."""
    model = copy.deepcopy(data.model)
    model.train()
    batch = InBatchSampler().batch_fn(data.log_q)(
        {"user": torch.from_numpy(users), "item": torch.from_numpy(items),
         "label": torch.ones(len(users))})  # fmt: skip

    def step():
        loss = model.batch_loss(losses.inbatch_softmax, user_features(data.users, batch),
                                gather(data.items, batch["item"]), batch, None)  # fmt: skip
        loss.backward()

    return flops.record_gemms(step)


def gemm_fraction(replay: flops.GemmReplay, steps: int, step_s: list, gemm_s: list) -> dict:
    """train_gemm_fraction: the step's model FLOPs per second (the trainer's loop time) over
    torch.mm's on the same shapes, timed right after it each round; median of the rounds."""
    step_s, gemm_s = np.array(step_s), np.array(gemm_s)
    return {"train_gemm_fraction": float(np.median(gemm_s / step_s)),
            "train_step_gflop": replay.flops / 1e9, "train_step_gemms": len(replay.ops),
            "train_gflops": replay.flops * steps / float(np.median(step_s)) / 1e9,
            "train_mm_gflops": replay.flops * steps / float(np.median(gemm_s)) / 1e9}  # fmt: skip


def bench_eval(data: Data, sizes: Sizes, device: str = "cpu") -> dict:
    """evaluate_index (Flat) against reference.reference_evaluate on the same embeddings and
    users; then the exact search's GFLOP/s beside torch.mm of the same chunk shapes. On cuda,
    twotower's side is the same masked exact search on the device (gpu.exact_top)."""
    test = data.parts["test"]
    seen = pd.concat([data.parts["train"], data.parts["valid"]])
    model = data.model
    items = encode_all(model, data.items, np.arange(1, data.n_items + 1), "item")
    all_users = np.unique(test["user"].to_numpy())
    users = all_users[: sizes.reference_users]
    held = test[test["user"].isin(users)]
    u = encode_all(model, data.users, users, "user")
    index = build_index(items, "Flat")

    def ours_fn():
        ev = EvalSet.build(held, seen, data.n_items)
        if device == "cpu":
            return evaluate_index(index, u, ev, KS, data.n_items)
        ranked = gpu.exact_top(items, u, ev.exclude, max(KS), data.n_items, device)
        return evaluate_ranked(ranked, ev, KS, data.n_items)

    def ref_fn():
        return reference.reference_evaluate(items, u, users, held, seen, KS, data.n_items)

    ours_t, ref_t = [], []
    for rep in range(sizes.repeats):
        for side in ("reference", "twotower") if rep % 2 == 0 else ("twotower", "reference"):
            start = time.perf_counter()
            if side == "twotower":
                ours_m = ours_fn()
                ours_t.append(time.perf_counter() - start)
            else:
                ref_m = ref_fn()
                ref_t.append(time.perf_counter() - start)
            log(f"eval: {side} {time.perf_counter() - start:.2f}s for {len(users)} users")
    diff = max(abs(ours_m[k] - ref_m[k]) for k in ref_m)
    out = {"eval_speedup": float(np.median(ref_t) / np.median(ours_t)),
           "eval_users": len(users), "eval_items": data.n_items,
           "eval_max_abs_diff": diff, "eval_equal": bool(diff <= 1e-6)}  # fmt: skip

    # throughput: every test user against the whole catalogue; the whole search (as evaluate
    # runs it: one scores buffer, masking, top-k) alternates with torch.mm over the same chunks
    u_all = encode_all(model, data.users, all_users, "user")
    ev_all = EvalSet.build(test, seen, data.n_items)
    flops = 2.0 * len(u_all) * items.shape[0] * items.shape[1]
    chunk = search_chunk_rows(items.shape[0]) if device == "cpu" else 4096
    Vt = torch.from_numpy(items).to(device).T
    U = torch.from_numpy(u_all).to(device)
    buf = torch.empty(min(chunk, len(U)), items.shape[0], device=device)

    def gemm():
        for s in range(0, len(U), chunk):
            torch.mm(U[s : s + chunk], Vt, out=buf[: min(chunk, len(U) - s)])

    def exact():
        if device == "cpu":
            exact_top_unseen(items, u_all, ev_all.exclude, max(KS), data.n_items)
        else:
            gpu.exact_top(items, u_all, ev_all.exclude, max(KS), data.n_items, device, chunk)

    search_t, gemm_t = [], []
    for rep in range(sizes.repeats + 2):
        for side in ("gemm", "search") if rep % 2 == 0 else ("search", "gemm"):
            (gemm_t if side == "gemm" else search_t).append(
                gpu.timed(gemm if side == "gemm" else exact, device)
            )
    out["eval_gflops"] = flops / float(np.median(search_t)) / 1e9
    out["gemm_gflops"] = flops / float(np.median(gemm_t)) / 1e9
    out["eval_gemm_fraction"] = out["eval_gflops"] / out["gemm_gflops"]
    out["eval_gflops_users"] = len(u_all)
    log(f"eval: search {out['eval_gflops']:.1f} GFLOP/s, gemm {out['gemm_gflops']:.1f}")
    return out


def ann_model(sizes: Sizes, out_dir: Path, cache_dir: str, threads: int) -> Path:
    """`twotower run dataset=synthetic` at ann_items items, one epoch, sparse embeddings (a
    subprocess; a rerun skips the stages that are current). Returns its embed dir."""
    run_out = out_dir / "ann-model"
    overrides = ["dataset=synthetic", f"dataset.load.n_items={sizes.ann_items}",
                 f"dataset.load.n_users={sizes.ann_users}",
                 f"dataset.load.n_interactions={sizes.ann_interactions}",
                 f"dataset.load.n_clusters={sizes.ann_clusters}",
                 f"dataset.load.cache_dir={cache_dir}", "train.epochs=1", "train.refit=false",
                 "train.sparse_embeddings=true", f"threads={threads}",
                 f"paths.out={run_out}"]  # fmt: skip
    log(f"ann: twotower run {' '.join(overrides)}")
    script = Path(sys.executable).with_name("twotower")
    subprocess.run([str(script), "run", *overrides], check=True, stdout=subprocess.DEVNULL)
    return Layout.named(run_out, "synthetic", "inbatch", "dssm").embed


def bench_ann(sizes: Sizes, source: str, embed_dir: Path | None = None, k: int = 50,
              recall_bar: float = 0.95, device: str = "cpu") -> tuple[dict, list]:  # fmt: skip
    """ANN indexes against exact search. source "trained": the item vectors of embed_dir
    (a trained model's catalogue), queries = its user vectors; "clustered": generated unit
    vectors around N_CENTRES centres (the earlier, easier data)."""
    rng = np.random.default_rng(0)
    if source == "trained":
        items, queries = ann.trained_vectors(embed_dir, sizes.ann_queries)
    else:
        # items and queries (users) share the interest centres
        centres = rng.standard_normal((N_CENTRES, 64)).astype(np.float32)
        items = ann.clustered_vectors(sizes.ann_items, centres, SPREAD, rng)
        queries = ann.clustered_vectors(sizes.ann_queries, centres, SPREAD, rng)
    log(f"ann: {len(items)} items, {len(queries)} queries ({source})")
    extra = {}
    if device != "cpu":  # exact search on the device, batched over every query
        none = np.zeros(0, np.int64)
        t = [gpu.timed(lambda: gpu.exact_top(items, queries, none, k, len(items), device), device)
             for _ in range(sizes.repeats)]  # fmt: skip
        extra["ann_device_exact_qps"] = len(queries) / float(np.median(t))
        log(f"ann: exact search on {device}: {extra['ann_device_exact_qps']:.0f} q/s")
    rows = ann.sweep(items, queries, sizes.ann_candidates, k, sizes.repeats, log=log)
    best = ann.best_meeting(rows, recall_bar)
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


def run_pipeline(n: int, sizes: Sizes, out_dir: Path, cache_dir: str) -> dict:
    """The six stages on synthetic data with n interactions, each `twotower <stage>` in its
    own subprocess: per-stage seconds from the manifests, per-stage peak RSS from wait4
    (`scale/<n>/<stage>_rss_gib`; `peak_rss_gib` is the largest)."""
    run_out = out_dir / "scale" / str(n)
    n_users, n_items = sizes.scale_shapes.get(n, (n // 20, sizes.scale_items))
    overrides = ["dataset=synthetic", f"dataset.load.n_interactions={n}",
                 f"dataset.load.n_users={n_users}", f"dataset.load.n_items={n_items}",
                 f"dataset.load.cache_dir={cache_dir}", f"train.epochs={sizes.scale_epochs}",
                 f"train.max_steps={sizes.scale_max_steps}", "train.refit=false",
                 f"train.sparse_embeddings={str(sizes.sparse_embeddings).lower()}",
                 f"paths.out={run_out}"]  # fmt: skip
    if n in sizes.scale_users:
        valid_users, eval_users = sizes.scale_users[n]
        overrides += [f"train.valid_max_users={valid_users}", f"eval.max_users={eval_users}"]
    script = Path(sys.executable).with_name("twotower")
    start = time.perf_counter()
    out: dict = {}
    stages = sizes.scale_stages.get(n, STAGES)
    for stage in stages:
        log(f"scale: twotower {stage} {' '.join(overrides)}")
        proc = subprocess.Popen([str(script), stage, *overrides])
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"scale: `twotower {stage}` at {n} interactions failed")
        out[f"scale/{n}/{stage}_rss_gib"] = usage.ru_maxrss / 2**20
    L = Layout.named(run_out, "synthetic", "inbatch", "dssm")
    dirs = {s: L.stage(s) for s in STAGES}
    out[f"scale/{n}/wall_s"] = time.perf_counter() - start
    out[f"scale/{n}/peak_rss_gib"] = max(out[f"scale/{n}/{s}_rss_gib"] for s in stages)
    for stage, d in ((s, d) for s, d in dirs.items() if s in stages):
        manifest = json.loads((d / FILES.manifest).read_text())
        out[f"scale/{n}/{stage}_s"] = manifest["seconds"]
        if stage == "preprocess":
            out[f"scale/{n}/positives"] = manifest["figures"]["positives"]
        if stage == "evaluate":
            out[f"scale/{n}/recall@20"] = manifest["figures"]["model/recall@20"]
    return out


def bench_dist(sizes: Sizes, out_dir: Path, cache_dir: str) -> dict:
    """Training samples/s of `twotower train` (subprocesses), one thread per process, on the
    bench data. Each round runs train.nproc=1 at batch B, train.nproc=2 at batch B (strong
    scaling: the same global batch split over the ranks) and train.nproc=2 at batch 2B (weak
    scaling: each rank keeps B rows, the global batch doubles, as data-parallel training is
    used) twice, with train.dist_negatives=global (each rank's rows scored against the 2B
    columns of the global batch: the one-process loss at 2B) and =local (against its own B:
    per-rank work independent of the ranks, what docs/scale.md recommends for scaling out),
    alternating 1 2 2w 2l / 2l 2w 2 1 over `repeats` rounds. A run's rate is its manifest's:
    per epoch, the examples trained over the seconds from a barrier at the epoch's start to the
    end of its last step and the loss's sum over the ranks (launch, data loading and validation
    excluded), and of the `dist_epochs` epochs' rates the median (the upper one of an even
    count). dist_scaling_efficiency = rate(2, B) / (2 x rate(1, B)),
    dist_weak_efficiency_<negatives> = rate(2, 2B, negatives) / (2 x rate(1, B)) and
    dist_weak_efficiency the local one: 1.0 = two processes train twice as many examples a
    second. All use `sizes.sparse_embeddings` (docs/scale.md). Then one profiled run each of
    nproc=1 (B) and nproc=2 (2B) under both settings (`dist_profile`)."""
    run_out = out_dir / "dist"
    d, b = sizes.data, sizes.batch_size
    base = ["dataset=synthetic", f"dataset.load.n_interactions={d['n_interactions']}",
            f"dataset.load.n_users={d['n_users']}", f"dataset.load.n_items={d['n_items']}",
            f"dataset.load.cache_dir={cache_dir}", f"paths.out={run_out}", "threads=1",
            f"train.epochs={sizes.dist_epochs}", f"train.patience={sizes.dist_epochs}",
            # one training a run: the rates are the early-stopped fit's (no refit after it)
            "train.refit=false",
            f"train.sparse_embeddings={str(sizes.sparse_embeddings).lower()}"]  # fmt: skip
    script = str(Path(sys.executable).with_name("twotower"))
    for stage in ("preprocess", "sample"):
        subprocess.run([script, stage, *base], check=True, stdout=subprocess.DEVNULL)
    manifest = Layout.named(run_out, "synthetic", "inbatch", "dssm").train / FILES.manifest
    # (train.nproc, train.batch_size, train.dist_negatives)
    runs = {"1": (1, b, "global"), "2": (2, b, "global"), "2w": (2, 2 * b, "global"),
            "2l": (2, 2 * b, "local")}  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in runs}  # each run's rate, kept in bench.json
    for r in range(sizes.repeats):
        for key in list(runs) if r % 2 == 0 else list(reversed(runs)):
            nproc, batch, negatives = runs[key]
            log(f"dist: twotower train train.nproc={nproc} train.batch_size={batch} "
                f"train.dist_negatives={negatives} (round {r + 1})")  # fmt: skip
            # min_steps_per_epoch=0: the batch as asked (on --quick's data the rule halved 2B
            # to B, so the weak runs were strong ones)
            subprocess.run([script, "train", *base, f"train.nproc={nproc}",
                            f"train.batch_size={batch}", f"train.dist_negatives={negatives}",
                            "train.min_steps_per_epoch=0"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            rates[key].append(json.loads(manifest.read_text())["figures"]["samples_per_s"])
    one, two, weak, weak_local = (float(np.median(rates[k])) for k in runs)
    return {"dist/samples_per_s@1": one, "dist/samples_per_s@2": two,
            "dist/weak_samples_per_s@2": weak, "dist/weak_local_samples_per_s@2": weak_local,
            "dist_scaling_efficiency": two / (2 * one),
            "dist_weak_efficiency_global": weak / (2 * one),
            "dist_weak_efficiency_local": weak_local / (2 * one),
            "dist_weak_efficiency": weak_local / (2 * one), "dist/rounds": sizes.repeats,
            "dist/runs@1": rates["1"], "dist/runs@2": rates["2"], "dist/weak_runs@2": rates["2w"],
            "dist/weak_local_runs@2": rates["2l"],
            **dist_profile(script, base, run_out, b)}  # fmt: skip


def dist_profile(script: str, base: list[str], run_out: Path, batch: int) -> dict:
    """Where a step's time goes at train.nproc=1 (batch B) and 2 (2B, weak scaling) with
    train.dist_negatives=global (`@2`) and local (`@2_local`): one run each under
    TWOTOWER_PROFILE (training/hooks.py: torch.profiler over 30 steps of the first epoch). Per
    step, rank 0: wall ms, and the ops' self time (the profiler's time on the thread, waits
    included) in the collectives (COLLECTIVE) and in every other op; the step's rest is Python
    between the ops."""
    out: dict = {}
    for name, nproc, b, negatives in (("1", 1, batch, "global"), ("2", 2, 2 * batch, "global"),
                                      ("2_local", 2, 2 * batch, "local")):  # fmt: skip
        prof_dir = run_out / f"profile-{name}"
        shutil.rmtree(prof_dir, ignore_errors=True)
        env = {**os.environ, "TWOTOWER_PROFILE": str(prof_dir)}
        subprocess.run([script, "train", *base, f"train.nproc={nproc}", f"train.batch_size={b}",
                        f"train.dist_negatives={negatives}", "train.epochs=1",
                        "train.max_steps=45"], check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        prof = json.loads((prof_dir / FILES.profile(0)).read_text())
        comm = sum(ms for op, ms in prof["self_cpu_ms"].items() if COLLECTIVE.search(op))
        total = sum(prof["self_cpu_ms"].values())
        out |= {
            f"dist/profile@{name}/step_ms": prof["step_ms"],
            f"dist/profile@{name}/collective_ms": comm,
            f"dist/profile@{name}/other_ops_ms": total - comm,
            f"dist/profile@{name}/top_ops": dict(list(prof["self_cpu_ms"].items())[:12]),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    parser.add_argument("--sections", default="train,eval,ann,scale,dist,peers")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--cache-dir", default="data/synthetic")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument(
        "--update",
        action="store_true",
        help="add to the existing bench.json instead of starting afresh",
    )
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="DIR",
        help="also take the results of another run's output folder",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--device", default="cpu", help="cuda: train, eval and ann on the GPU (make bench-gpu)"
    )
    parser.add_argument("--ann-queries", type=int, default=None)
    parser.add_argument(
        "--ann-candidates",
        default=None,
        metavar="JSON",
        help="factory -> search settings, e.g. '{\"IVF4096,Flat\": [16, 32]}'",
    )
    parser.add_argument("--ann-source", choices=("trained", "clustered"), default="trained")
    parser.add_argument(
        "--ann-embed",
        default=None,
        metavar="DIR",
        help="a `twotower embed` output folder to take the ANN vectors from (default: train one)",
    )
    args = parser.parse_args(argv)
    sizes = copy.deepcopy(QUICK if args.quick else Sizes())
    if args.repeats:
        sizes.repeats = args.repeats
    if args.train_steps:
        sizes.train_steps = args.train_steps
    if args.ann_queries:
        sizes.ann_queries = args.ann_queries
    if args.ann_candidates:
        sizes.ann_candidates = json.loads(args.ann_candidates)
    sections = [s for s in args.sections.split(",") if s]
    device_name = "cpu"
    if args.device != "cpu":
        device_name = gpu.require_cuda()
        sizes.batch_size = gpu.GPU_BATCH
    torch.set_num_threads(args.threads)
    ann.set_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = out_dir / FILES.bench_results
    results: dict = json.loads(old.read_text()) if args.update and old.exists() else {}
    results |= {"quick": args.quick, "threads": args.threads, "device": args.device,
                "device_name": device_name,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    ann_path = out_dir / FILES.bench_ann
    ann_rows: list = json.loads(ann_path.read_text()) if args.update and ann_path.exists() else []
    for other in map(Path, args.merge):
        results |= {k: v for k, v in json.loads((other / FILES.bench_results).read_text()).items()
                    if k not in ("quick", "threads", "started")}  # fmt: skip
        if (other / FILES.bench_ann).exists():
            ann_rows = json.loads((other / FILES.bench_ann).read_text())
    if {"train", "eval"} & set(sections):
        data = Data(sizes, args.cache_dir)
        if "train" in sections:
            results.update(bench_train(data, sizes, args.device))
        if "eval" in sections:
            results.update(bench_eval(data, sizes, args.device))
    if "ann" in sections:
        embed_dir = None
        if args.ann_source == "trained":
            embed_dir = Path(args.ann_embed) if args.ann_embed else ann_model(
                sizes, out_dir, args.cache_dir, args.threads)  # fmt: skip
        ann_results, ann_rows = bench_ann(sizes, args.ann_source, embed_dir,
                                          device=args.device)  # fmt: skip
        results.update(ann_results)
        ann_path.write_text(json.dumps(ann_rows, indent=1))
    if "peers" in sections:
        results.update(peers.section(out_dir, args.threads, sizes.repeats, log))
    if "dist" in sections:
        results.update(bench_dist(sizes, out_dir, args.cache_dir))
    if "scale" in sections:
        for n in sizes.scale:
            results.update(run_pipeline(n, sizes, out_dir, args.cache_dir))
        results["peak_rss_gib"] = results[f"scale/{sizes.scale[-1]}/peak_rss_gib"]
        results["scale_sizes"] = list(sizes.scale)
    (out_dir / FILES.bench_results).write_text(json.dumps(results, indent=1))
    report.write(results, ann_rows, out_dir, " ".join(sys.argv))
    log(f"bench: wrote {out_dir / FILES.bench_results} and {out_dir / FILES.bench_page}")


if __name__ == "__main__":
    main()
