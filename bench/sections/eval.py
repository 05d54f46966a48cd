"""Section `eval` of the benchmark (`python -m bench.run --sections eval`): twotower's evaluation
against the per-user Python loop of bench/reference.py, and its exact search's GFLOP/s beside a
plain torch.mm of the same chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bench import gpu, log, reference
from bench.data import Data
from bench.sizes import Sizes
from bench.timer import Rounds, alternate
from twotower_cli.retrieval.search import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    exact_top_unseen,
    search_chunk_rows,
)
from twotower_cli.training.trainer import encode_all

KS = [10, 20, 50]


def section(data: Data, sizes: Sizes, device: str = "cpu") -> dict:
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

    def ours(r: int) -> dict:
        ev = EvalSet.build(held, seen, data.n_items)
        if device == "cpu":
            return evaluate_index(index, u, ev, KS, data.n_items)
        ranked = gpu.exact_top(items, u, ev.exclude, max(KS), data.n_items, device)
        return evaluate_ranked(ranked, ev, KS, data.n_items)

    def said(side: str, r: int, so_far: Rounds) -> None:
        log(f"eval: {side} {so_far.seconds[side][-1]:.2f}s for {len(users)} users")

    rounds = alternate(sizes.repeats, {
        "reference": lambda r: reference.reference_evaluate(items, u, users, held, seen, KS,
                                                            data.n_items),
        "twotower": ours}, after=said)  # fmt: skip
    ours_m, ref_m = rounds.results["twotower"][-1], rounds.results["reference"][-1]
    diff = max(abs(ours_m[k] - ref_m[k]) for k in ref_m)
    out = {"eval_speedup": rounds.median("reference") / rounds.median("twotower"),
           "eval_users": len(users), "eval_items": data.n_items,
           "eval_max_abs_diff": diff, "eval_equal": bool(diff <= 1e-6)}  # fmt: skip
    out |= search_gflops(data, items, all_users, seen, sizes.repeats, device)
    log(f"eval: search {out['eval_gflops']:.1f} GFLOP/s, gemm {out['gemm_gflops']:.1f}")
    return out


def search_gflops(data: Data, items: np.ndarray, all_users: np.ndarray, seen: pd.DataFrame,
                  repeats: int, device: str) -> dict:  # fmt: skip
    """Throughput: every test user against the whole catalogue; the whole search (as evaluate
    runs it: one scores buffer, masking, top-k) alternates with torch.mm over the same chunks,
    `repeats` + 2 rounds."""
    u_all = encode_all(data.model, data.users, all_users, "user")
    ev_all = EvalSet.build(data.parts["test"], seen, data.n_items)
    flops = 2.0 * len(u_all) * items.shape[0] * items.shape[1]
    chunk = search_chunk_rows(items.shape[0]) if device == "cpu" else 4096
    Vt = torch.from_numpy(items).to(device).T
    U = torch.from_numpy(u_all).to(device)
    buf = torch.empty(min(chunk, len(U)), items.shape[0], device=device)

    def gemm(r: int) -> None:
        for s in range(0, len(U), chunk):
            torch.mm(U[s : s + chunk], Vt, out=buf[: min(chunk, len(U) - s)])

    def exact(r: int) -> None:
        if device == "cpu":
            exact_top_unseen(items, u_all, ev_all.exclude, max(KS), data.n_items)
        else:
            gpu.exact_top(items, u_all, ev_all.exclude, max(KS), data.n_items, device, chunk)

    rounds = alternate(repeats + 2, {"gemm": gemm, "search": exact}, device=device)
    out = {
        "eval_gflops": rounds.rate("search", flops) / 1e9,
        "gemm_gflops": rounds.rate("gemm", flops) / 1e9,
    }
    return out | {"eval_gemm_fraction": out["eval_gflops"] / out["gemm_gflops"],
                  "eval_gflops_users": len(u_all)}  # fmt: skip
