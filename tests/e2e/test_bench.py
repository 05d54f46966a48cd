"""The benchmark's correctness on small sizes (`make bench` itself is not part of the tests):
the reference loops and twotower agree, the ANN recall is computed right, the synthetic data
set is cached and the fast evaluation paths match the plain ones."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the bench/ package


@pytest.mark.slow
def test_dist_section_measures_both_process_counts(tmp_path: Path):
    from bench.sections.dist import section as bench_dist
    from bench.sizes import QUICK

    sizes = copy.deepcopy(QUICK)
    sizes.data = {"n_users": 300, "n_items": 200, "n_interactions": 6000}
    # batch 16: 123 steps an epoch, 61 at 2 x 16, enough for the profile's 30 steps after 10
    sizes.repeats, sizes.dist_epochs, sizes.batch_size = 1, 1, 16
    out = bench_dist(sizes, tmp_path, str(tmp_path / "cache"))
    one, two = out["dist/samples_per_s@1"], out["dist/samples_per_s@2"]
    weak, local = out["dist/weak_samples_per_s@2"], out["dist/weak_local_samples_per_s@2"]
    assert one > 0 and two > 0 and weak > 0 and local > 0
    assert out["dist_scaling_efficiency"] == pytest.approx(two / (2 * one))
    assert out["dist_weak_efficiency_global"] == pytest.approx(weak / (2 * one))
    # the headline is train.dist_negatives=local's, the setting docs/scale.md recommends
    assert out["dist_weak_efficiency"] == out["dist_weak_efficiency_local"]
    assert out["dist_weak_efficiency_local"] == pytest.approx(local / (2 * one))
    runs = ("dist/runs@1", "dist/runs@2", "dist/weak_runs@2", "dist/weak_local_runs@2")
    assert [len(out[k]) for k in runs] == [1] * 4
    # the profile: rank 0's step, split into the collectives' CPU time and the rest's
    for n in ("1", "2", "2_local"):
        assert out[f"dist/profile@{n}/step_ms"] > 0 and out[f"dist/profile@{n}/other_ops_ms"] > 0
    assert out["dist/profile@1/collective_ms"] == 0  # one process: no collective
    assert (
        out["dist/profile@2/collective_ms"] > 0 and out["dist/profile@2_local/collective_ms"] > 0
    )
    # local: no all_gather of the item vectors (the global run has one, forward and backward)
    assert not any("_AllGather" in op for op in out["dist/profile@2_local/top_ops"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.slow
def test_make_bench_gpu_fails_clearly_without_cuda(tmp_path: Path):
    import subprocess

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--device", "cuda", "--out",
                           str(tmp_path)], cwd=root, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"bench: --device cuda needs a CUDA GPU; torch {torch.__version__} sees none here "
        "(run `make bench` for the CPU benchmark)"
    ]
    assert not (tmp_path / "bench.json").exists()
