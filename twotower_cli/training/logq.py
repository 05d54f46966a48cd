"""The exact logQ in numpy: each item's share of the positives, the Q of the loss's logQ
correction (Yi et al., RecSys 2019). Torch-free, so `twotower sample` (the samplers) loads it
without the training stack; losses.py re-exports it for training."""

from __future__ import annotations

import numpy as np


def log_frequency(counts: np.ndarray) -> np.ndarray:
    """log Q per item from its training counts (index = item id, 0 = padding): its share of
    the positives, an unseen item counted as half a positive (the samplers' exact logQ)."""
    counts = counts.astype(np.float64)
    counts[counts == 0] = 0.5
    return np.log(counts / counts[1:].sum()).astype(np.float32)
