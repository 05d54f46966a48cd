"""Negative samplers: what goes into a training batch (`twotower sample`, `sampler=...`).

Samplers follow scikit-learn's habits: `__init__` stores parameters, `fit` learns from the
training positives (never validation or test) and sets trailing-underscore attributes,
randomness comes from `seed`. What a fitted sampler hands to training:

- `examples()`: the positives (user, item, label), one row per training positive;
- `negatives()`: explicit negatives as an int64 array [n_positives, n_neg] (row i belongs to
  example i), or None when the batch's other positives are the negatives;
- `item_log_q_`: log of each item's probability per draw of appearing as a negative (index 0 =
  padding), the Q of the loss's logQ correction (Yi et al., RecSys 2019);
- `batch_fn(item_log_q, seed)`: the per-batch work training does for this sampler (extra shared
  negatives, logQ of every column, the streaming frequency estimate), or None. It lives in
  steps.py, the one sampler module that imports torch, loaded when training asks for it: the
  `sample` stage runs without torch.

What the stages read off a sampler before fitting it (`loss`, `logq`, `train_only`, `streams`,
`needs_band`) is declared on `Sampler` (base.py), one line each.

The batch is a dict of tensors: `user`, `item`, `label` [B]; optional `neg` ([B, n] per-row or
[m] shared), `log_q` [B] and `neg_log_q` (shape of `neg`): log of each column's expected count
among the batch's negatives. The loss (losses.py) decides what to do with them.
"""

from twotower_cli.samplers.base import LOGQ_MODES, Sampler, item_log_frequency
from twotower_cli.samplers.explicit import (
    ExplicitSampler,
    PopularitySampler,
    RandomNegativeSampler,
    draw_excluding,
    popularity_probs,
)
from twotower_cli.samplers.exposures import add_exposure_negatives
from twotower_cli.samplers.hard import HardNegativeSampler, attribute_groups
from twotower_cli.samplers.inbatch import (
    CatalogueSampler,
    InBatchSampler,
    MixedSampler,
    UniformSampler,
)

__all__ = [
    "LOGQ_MODES", "Sampler", "item_log_frequency", "ExplicitSampler",
    "PopularitySampler", "RandomNegativeSampler", "draw_excluding", "popularity_probs",
    "add_exposure_negatives", "HardNegativeSampler", "attribute_groups", "InBatchSampler",
    "MixedSampler", "UniformSampler", "CatalogueSampler",
]  # fmt: skip
