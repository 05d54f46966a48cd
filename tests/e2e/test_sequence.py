"""The sequence user tower (`model.history_pooling=transformer`): causal, its training positions
are the serving vectors of the prefixes, every variant trains a next-item step, sequences are
built from the sorted log, and the ONNX export matches PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import read_json, twotower
from helpers import ML1M_TINY

from twotower_cli.artifacts.checkpoint import load_dir
from twotower_cli.data.tables import load_schema
from twotower_cli.models.inputs import feature_tensors
from twotower_cli.training.trainer import gather


@pytest.mark.slow
def test_loo_protocol_trains_the_sequence_tower_end_to_end_and_exports_it(tmp_path):
    out = tmp_path / "outputs"
    args = ["dataset=ml1m", f"dataset.load.raw_dir={ML1M_TINY}", "dataset.load.verify=false",
            "protocol=loo", "train.epochs=2", "threads=1", f"paths.out={out}"]  # fmt: skip
    assert twotower("run", *args) == 0
    run = out / "ml1m-loo" / "sample" / "full" / "dssm"
    config = read_json(run / "train" / "manifest.json")["config"]
    assert config["model"]["history_pooling"] == "transformer"
    assert config["sampler"]["_target_"].endswith("CatalogueSampler")
    assert {"hit_rate@10", "ndcg@10"} <= set(read_json(run / "evaluate" / "metrics.json")["model"])
    assert twotower("export", *args) == 0
    model, _ = load_dir(run / "train")
    example = {"history": torch.tensor([[0, 0, 3, 5], [1, 2, 3, 4]])}
    session = ort.InferenceSession(str(run / "export" / "user_tower.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names[-1] == "history"
    prep = out / "ml1m-loo" / "preprocess"
    feats = gather(feature_tensors(pd.read_parquet(prep / "users.parquet"),
                                   load_schema(prep)["user"]), torch.tensor([1, 2]))  # fmt: skip
    hist = torch.zeros(2, model.history_len, dtype=torch.long)
    hist[:, -4:] = example["history"]
    feats["history"] = hist
    (u_onnx,) = session.run(None, {n: feats[n].numpy() for n in names})
    with torch.no_grad():
        np.testing.assert_allclose(u_onnx, model.user_vectors(feats).numpy(), rtol=0, atol=1e-5)
