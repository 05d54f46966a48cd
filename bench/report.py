"""bench.json -> bench.md (readable tables) and scale.png (seconds per stage against data size),
written by `make bench`."""

from __future__ import annotations

from pathlib import Path

from twotower_cli.core.layout import FILES

STAGES = ("preprocess", "sample", "train", "embed", "index", "evaluate")
TARGETS = [
    ("train_speedup", ">=", 2.5),
    ("train_gemm_fraction", ">=", 0.5),
    ("eval_speedup", ">=", 20.0),
    ("eval_gemm_fraction", ">=", 0.5),
    ("ann_recall@50", ">=", 0.95),
    ("ann_qps_ratio", ">=", 10.0),
    ("peak_rss_gib", "<=", 6.0),
    ("dist_weak_efficiency", ">=", 0.8),
    ("peer_speedup", ">=", 4.0),
    ("peer_recall_ratio", ">=", 2.0),
]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def scale_table(results: dict) -> list[str]:
    sizes = results.get("scale_sizes", [])
    if not sizes:
        return []
    head = "| interactions | positives | " + " | ".join(f"{s} s" for s in STAGES)
    head += " | " + " | ".join(f"{s} GiB" for s in STAGES)
    lines = [head + " | wall s | peak RSS GiB | recall@20 |",
             "|---" * (2 * len(STAGES) + 5) + "|"]  # fmt: skip
    for n in sizes:
        p = f"scale/{n}/"
        cells = [f"{n:,}", f"{results[p + 'positives']:,}"]
        # a size that runs only some stages (bench/sizes.py's scale_stages) leaves the rest "-"
        cells += [_cell(results, p + f"{s}_s", ".1f") for s in STAGES]
        cells += [_cell(results, p + f"{s}_rss_gib", ".2f") for s in STAGES]
        cells += [_cell(results, p + k, f) for k, f in
                  (("wall_s", ".1f"), ("peak_rss_gib", ".2f"), ("recall@20", ".4f"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(results: dict, key: str, fmt: str) -> str:
    return format(results[key], fmt) if key in results else "-"


def growth(results: dict) -> dict[str, float]:
    """Each stage's cost ratio per data-size ratio between the smallest and largest run
    (1.0 = linear, above = worse than linear)."""
    sizes = results.get("scale_sizes", [])
    if len(sizes) < 2:
        return {}
    out = {}
    for s in STAGES:  # from the smallest to the largest size that ran the stage
        ran = [n for n in sizes if f"scale/{n}/{s}_s" in results]
        if len(ran) < 2:
            continue
        lo, hi = ran[0], ran[-1]
        a, b = results[f"scale/{lo}/{s}_s"], results[f"scale/{hi}/{s}_s"]
        out[s] = (b / max(a, 1e-9)) / (hi / lo)
    return out


def plot(results: dict, path: Path) -> bool:
    sizes = results.get("scale_sizes", [])
    if not sizes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in STAGES:
        ax.plot(sizes, [results.get(f"scale/{n}/{s}_s", float("nan")) for n in sizes], marker="o",
                label=s)  # fmt: skip
    # the whole run's wall time, only for sizes that ran every stage
    full = [all(f"scale/{n}/{s}_s" in results for s in STAGES) for n in sizes]
    wall = [
        results[f"scale/{n}/wall_s"] if f else float("nan")
        for n, f in zip(sizes, full, strict=True)
    ]
    ax.plot(sizes, wall, marker="s", color="black", label="whole run (wall)")
    ax.plot(sizes, [wall[0] * n / sizes[0] for n in sizes], ls="--", color="grey",
            label="linear from the first run")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions")
    ax.set_ylabel("seconds")
    ax.set_title("twotower run: seconds per stage against data size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def peers_lines(results: dict) -> list[str]:
    """The peers table: twotower's default beside torch-rechub's DSSM."""
    if "peer_speedup" not in results:
        return []
    r = results
    return ["", f"## Peers on MovieLens-100K (same split, metric and masks; "
            f"{r['peer_threads']} thread(s))", "",
            "| | training positives/s | train s | wall s | test recall@20 |",
            "|---|---|---|---|---|",
            f"| twotower (default DSSM, {r['peer_twotower_epochs']} epochs) | "
            f"{r['peer_twotower_samples_per_s']:,.0f} | {r['peer_twotower_train_s']:.1f} | "
            f"{r['peer_twotower_wall_s']:.1f} | {r['peer_twotower_recall@20']:.4f} |",
            f"| torch-rechub DSSM (lr {r['peer_rechub_lr']:g}, "
            f"{r['peer_rechub_epochs']} epochs) | "
            f"{r['peer_rechub_samples_per_s']:,.0f} | {r['peer_rechub_train_s']:.1f} | "
            f"{r['peer_rechub_wall_s']:.1f} | {r['peer_rechub_recall@20']:.4f} |", "",
            f"peer_speedup {r['peer_speedup']:.2f}, peer_recall_ratio "
            f"{r['peer_recall_ratio']:.2f}; positives/s: medians of "
            f"{r.get('peer_speed_rounds', 1)} rounds alternating the sides; rechub's wall "
            "includes its validation search over learning rates and epochs, its train s the "
            "chosen run up to its best epoch."]  # fmt: skip


def write(results: dict, ann_rows: list[dict], out_dir: Path, command: str) -> None:
    lines = ["# twotower benchmark", "", f"Command: `{command}`; threads: {results['threads']}; "
             f"started {results['started']}; quick: {results['quick']}.", "",
             "## Targets", "", "| key | value | target | met |", "|---|---|---|---|"]  # fmt: skip
    if "eval_equal" in results:
        diff = results["eval_max_abs_diff"]
        lines.append(f"| eval metrics equal to 1e-6 | max diff {diff:.2g} | <= 1e-06 | "
                     f"{'yes' if results['eval_equal'] else 'NO'} |")  # fmt: skip
    for key, op, bar in TARGETS:
        if key in results:
            v = results[key]
            met = v >= bar if op == ">=" else v <= bar
            lines.append(f"| {key} | {_fmt(v)} | {op} {bar} | {'yes' if met else 'NO'} |")
    if "train_speedup_ceiling" in results:
        ms = {
            k: results[f"train_{k}ms_per_batch"] for k in ("", "reference_", "reference_loader_")
        }
        lines += ["", f"Train, per batch of {results['train_batch_size']}: twotower "
                  f"{ms['']:.1f} ms, reference {ms['reference_']:.1f} ms, of which its "
                  f"DataLoader {ms['reference_loader_']:.1f} ms; a trainer with a free data path "
                  f"would reach about train_speedup {results['train_speedup_ceiling']:.2f} "
                  "(`train_speedup_ceiling`)."]  # fmt: skip
    if "dist_scaling_efficiency" in results:
        lines += ["", f"Data-parallel training, samples/s with one thread per process: "
                  f"{results['dist/samples_per_s@1']:,.0f} at train.nproc=1, "
                  f"{results['dist/samples_per_s@2']:,.0f} at train.nproc=2 on the same global "
                  f"batch (strong scaling: {results['dist_scaling_efficiency']:.2f}), "
                  f"{results.get('dist/weak_samples_per_s@2', 0):,.0f} at train.nproc=2 with "
                  "each rank's batch kept and global in-batch negatives (weak scaling: "
                  f"{results.get('dist_weak_efficiency_global', 0):.2f}), "
                  f"{results.get('dist/weak_local_samples_per_s@2', 0):,.0f} with local ones "
                  f"(train.dist_negatives=local: {results.get('dist_weak_efficiency', 0):.2f}, "
                  "`dist_weak_efficiency`); median of "
                  f"{results['dist/rounds']} rounds each."]  # fmt: skip
    lines += peers_lines(results)
    if ann_rows:
        lines += ["", f"## ANN on {results['ann_items']:,} items ({results['ann_queries']:,} "
                  f"queries, k = 50, vectors: {results.get('ann_source', 'clustered')})", "",
                  "| index | search param | build s | MiB | recall@50 | queries/s | x exact |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in ann_rows:
            mib = f"{r['bytes'] / 2**20:.0f}" if "bytes" in r else ""
            cells = [r["index"], r["param"], f"{r['build_s']:.1f}", mib, f"{r['recall']:.4f}",
                     f"{r['qps']:.0f}", f"{r['qps_ratio']:.1f}"]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        if "ann_twotower_exact_qps" in results:
            lines += ["", f"Exact search, batched: faiss Flat {results['ann_flat_qps']:.0f} "
                      f"queries/s, twotower's exact_top_unseen "
                      f"{results['ann_twotower_exact_qps']:.0f} queries/s; x exact divides by "
                      "the faster."]  # fmt: skip
    table = scale_table(results)
    if table:
        lines += ["", "## Scale: `twotower run` per data size", "", *table, "",
                  "Cost growth per size growth, smallest to largest run (1.0 = linear): "
                  + ", ".join(f"{s} {g:.2f}" for s, g in growth(results).items()), ""]  # fmt: skip
        if plot(results, out_dir / FILES.plot("scale")):
            lines += [f"![seconds per stage against data size]({FILES.plot('scale')})", ""]
    lines += ["", "## All keys", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in results.items() if not isinstance(v, list)]
    (out_dir / FILES.bench_page).write_text("\n".join(lines) + "\n")
