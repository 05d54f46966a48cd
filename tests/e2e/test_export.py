"""`twotower export`: the ONNX user tower matches PyTorch, and the bundle alone (onnxruntime,
faiss, JSON) reproduces what `twotower serve` recommends."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import SMALL, read_json, twotower
from helpers import local_client

from twotower_cli import serve
from twotower_cli.artifacts.checkpoint import load_dir as _load_model
from twotower_cli.core.layout import Layout
from twotower_cli.data.tables import load_schema
from twotower_cli.export.user_tower import export_onnx
from twotower_cli.models.inputs import feature_tensors

ROOT = ("synthetic", "sample", "inbatch", "dssm")


@pytest.fixture(scope="module")
def exported(small_run: Path) -> Path:
    assert twotower("export", *SMALL, f"paths.out={small_run}") == 0
    return small_run


@pytest.mark.parametrize("batch", [1, 17, 300])
def test_onnx_user_tower_matches_pytorch(exported, batch):
    root = exported.joinpath(*ROOT)
    prep = exported / "synthetic" / "preprocess"
    model, _ = _load_model(root / "train")
    feats = feature_tensors(pd.read_parquet(prep / "users.parquet"), load_schema(prep)["user"])
    feats = {k: v[1 : batch + 1] for k, v in feats.items()}  # row 0 is padding
    session = ort.InferenceSession(str(root / "export" / "user_tower.onnx"))
    (u_onnx,) = session.run(None, {k: v.numpy() for k, v in feats.items()})
    with torch.no_grad():
        u_torch = model.user_vectors(feats).numpy()
    assert u_onnx.shape == (batch, 64)
    np.testing.assert_allclose(u_onnx, u_torch, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_vectors(exported, tmp_path):
    root = exported.joinpath(*ROOT)
    prep = exported / "synthetic" / "preprocess"
    model, _ = _load_model(root / "train")
    fields = load_schema(prep)["user"]
    feats = feature_tensors(pd.read_parquet(prep / "users.parquet"), fields)
    names = [f.name for f in fields]
    export_onnx(model, {k: v[1:3] for k, v in feats.items()}, names, tmp_path / "u.onnx", True)
    batch = {k: v[1:40] for k, v in feats.items()}
    (u_onnx,) = ort.InferenceSession(str(tmp_path / "u.onnx")).run(
        None, {k: v.numpy() for k, v in batch.items()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(u_onnx, model.user_vectors(batch).numpy(), rtol=0, atol=1e-5)


def test_serving_json_describes_the_graph_and_the_bundle_is_complete(exported):
    bundle = exported.joinpath(*ROOT) / "export"
    spec = read_json(bundle / "serving.json")
    session = ort.InferenceSession(str(bundle / spec["user_tower"]))
    graph = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    described = [(i["name"], f"tensor({i['dtype']})", i["shape"]) for i in spec["inputs"]]
    assert graph == described
    assert [i["name"] for i in spec["inputs"]] == ["user", "region", "age"]
    assert session.get_outputs()[0].name == spec["output"]["name"]
    index = faiss.read_index(str(bundle / spec["index"]["file"]))
    item_ids = json.loads((bundle / "item_ids.json").read_text())
    assert index.ntotal == len(item_ids) == 200 and index.d == spec["output"]["shape"][1]
    assert read_json(bundle / "manifest.json")["stage"] == "export"


def test_bundle_alone_recommends_what_serve_recommends(exported):
    """Another stack: encode raw values with vocabs.json as serving.json says, run the ONNX
    tower, search the faiss index, map rows through item_ids.json."""
    bundle = exported.joinpath(*ROOT) / "export"
    spec = read_json(bundle / "serving.json")
    vocabs = json.loads((bundle / "vocabs.json").read_text())["user"]
    raw = {"user": vocabs["user"][41], "region": vocabs["region"][0], "age": "no such age"}
    inputs = {}
    for i in spec["inputs"]:
        vocab = vocabs[i["name"]]
        code = vocab.index(raw[i["name"]]) + 1 if raw[i["name"]] in vocab else 0  # 0 = unknown
        inputs[i["name"]] = np.array([code], dtype=np.int64)
    (u,) = ort.InferenceSession(str(bundle / spec["user_tower"])).run(None, inputs)
    _, I = faiss.read_index(str(bundle / "items.faiss")).search(u, 10)
    item_ids = json.loads((bundle / "item_ids.json").read_text())
    offline = [item_ids[i] for i in I[0]]

    dirs = serve.ServeDirs(Layout.of_run(exported.joinpath(*ROOT), exported))
    state = serve.ServeState(partial(serve.load_bundle, dirs, _load_model))
    client = local_client(serve.create_app(state, serve.ServeSettings()))
    body = {"user": {"user_id": raw["user"], "region": raw["region"], "age": raw["age"]},
            "k": 10, "exclude_seen": False}  # fmt: skip
    online = [it["item_id"] for it in client.post("/recommend", json=body).json()["items"]]
    assert online == offline
