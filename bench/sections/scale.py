"""Section `scale` of the benchmark (`python -m bench.run --sections scale`): the six stages on
synthetic data at growing sizes (`Sizes.scale`), each `twotower <stage>` in its own subprocess,
with its seconds and peak resident memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import log
from bench.sizes import PLAIN_DSSM, Sizes
from twotower_cli.core.layout import FILES, Layout

STAGES = ("preprocess", "sample", "train", "embed", "index", "evaluate")


def section(sizes: Sizes, out_dir: Path, cache_dir: str) -> dict:
    """Every size of `sizes.scale` in turn (`run_pipeline`); `peak_rss_gib` is the largest
    size's peak, `scale_sizes` the sizes run."""
    results: dict = {}
    for n in sizes.scale:
        results.update(run_pipeline(n, sizes, out_dir, cache_dir))
    results["peak_rss_gib"] = results[f"scale/{sizes.scale[-1]}/peak_rss_gib"]
    results["scale_sizes"] = list(sizes.scale)
    return results


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
                 *PLAIN_DSSM,  # the DSSM the bench has always timed
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
