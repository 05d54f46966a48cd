"""twotower: a config-driven command-line pipeline for two-tower retrieval models."""

import os

__version__ = "0.1.0"

# OpenMP (torch, faiss) idle threads spin 2,000 rounds, then sleep, unless the user chose a
# policy. It takes effect only if this package is imported before torch loads libgomp (the CLI
# and the benchmark import it first), and child processes inherit it. Measured per DSSM
# training step at batch 1024 on 2 threads (docs/bench.md): libgomp's default spin made a step
# ~20x slower when the 2 cores were shared with other work (1,046 ms); OMP_WAIT_POLICY=PASSIVE
# fixed that (44 ms) but cost 1.7x on a quiet machine (29 ms against 16.4); 2,000 spins gave
# 17.5 ms quiet, 40-53 ms shared.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")
