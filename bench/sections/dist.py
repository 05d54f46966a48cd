"""Section `dist` of the benchmark (`python -m bench.run --sections dist`): `twotower train`
samples/s at train.nproc 1 and 2, one thread each, with in-batch negatives global and local,
and a profile of where a step's time goes (docs/scale.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

from bench import log
from bench.sizes import PLAIN_DSSM, Sizes
from bench.timer import alternate, median
from twotower_cli.core.layout import FILES, Layout

# the profiler's names of the collectives' ops: c10d's calls and gloo's, DDP's all-reduce, and
# distributed.py's all_gather (its forward and backward wait for the peer inside them)
COLLECTIVE = re.compile(r"gloo|c10d|nccl|_AllGather|record_param_comms")


def section(sizes: Sizes, out_dir: Path, cache_dir: str) -> dict:
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
            *PLAIN_DSSM,  # the DSSM the bench has always timed
            f"train.sparse_embeddings={str(sizes.sparse_embeddings).lower()}"]  # fmt: skip
    script = str(Path(sys.executable).with_name("twotower"))
    for stage in ("preprocess", "sample"):
        subprocess.run([script, stage, *base], check=True, stdout=subprocess.DEVNULL)
    manifest = Layout.named(run_out, "synthetic", "inbatch", "dssm").train / FILES.manifest
    # (train.nproc, train.batch_size, train.dist_negatives)
    runs = {"1": (1, b, "global"), "2": (2, b, "global"), "2w": (2, 2 * b, "global"),
            "2l": (2, 2 * b, "local")}  # fmt: skip

    def train_run(key: str, r: int) -> float:
        nproc, batch, negatives = runs[key]
        log(f"dist: twotower train train.nproc={nproc} train.batch_size={batch} "
            f"train.dist_negatives={negatives} (round {r + 1})")  # fmt: skip
        # min_steps_per_epoch=0: the batch as asked (on --quick's data the rule halved 2B
        # to B, so the weak runs were strong ones)
        subprocess.run([script, "train", *base, f"train.nproc={nproc}",
                        f"train.batch_size={batch}", f"train.dist_negatives={negatives}",
                        "train.min_steps_per_epoch=0"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        return json.loads(manifest.read_text())["figures"]["samples_per_s"]

    # each run's rate (its manifest's, not the timer's seconds), kept in bench.json
    rates = alternate(sizes.repeats, {key: partial(train_run, key) for key in runs}).results
    one, two, weak, weak_local = (median(rates[k]) for k in runs)
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
