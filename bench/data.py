"""The synthetic data set and the model that both sides of the benchmark's train and eval
sections use (`python -m bench.run --sections train,eval`)."""

from __future__ import annotations

import torch

from bench.sizes import Sizes
from twotower_cli.data import synthetic
from twotower_cli.data.preprocess import SplitSettings, preprocess
from twotower_cli.models.dssm import DSSM
from twotower_cli.models.inputs import feature_tensors
from twotower_cli.samplers import item_log_frequency


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
        # the plain DSSM of the bench's history: the model PLAIN_DSSM (bench/sizes.py) pins on the
        # bench's `twotower` runs
        self.model = DSSM(self.schema, embed_dim=32, hidden=[256], out_dim=64, dropout=0.1,
                          temperature=0.05, history=False)  # fmt: skip
