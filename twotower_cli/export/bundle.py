"""A serving bundle another stack can use without twotower (`twotower export`).

Writes the user tower as ONNX (one input per user feature, dynamic batch axis), a copy of the
faiss item index, the vocabularies, the faiss row -> raw item id map, and `serving.json`, which
says how to turn raw values into the ONNX inputs and what comes out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from twotower_cli.core.layout import FILES, Layout
from twotower_cli.core.settings import HISTORY
from twotower_cli.data.tables import load_schema
from twotower_cli.export.user_tower import OUTPUT, export_onnx, history_length
from twotower_cli.models.inputs import feature_tensors


def _inputs(fields: list, history_len: int) -> list[dict]:
    """serving.json's description of each ONNX input, in the graph's order."""
    encoding = {
        "categorical": "1 + position of the raw value in vocabs.json[user][name]; 0 = unknown",
        "multihot": "ids as for categorical, left-aligned, 0-padded to max_len",
        "numeric": "(value - mean) / std with [mean, std] = vocabs.json[user][name]; 0 = missing",
    }
    out = []
    for f in fields:
        shape = ["batch", f.max_len] if f.kind == "multihot" else ["batch"]
        dtype = "float32" if f.kind == "numeric" else "int64"
        out.append({"name": f.name, "kind": f.kind, "dtype": dtype, "shape": shape,
                    "encoding": encoding[f.kind]})  # fmt: skip
    if history_len:
        out.append({"name": HISTORY, "kind": "history", "dtype": "int64",
                    "shape": ["batch", history_len],
                    "encoding": "the user's latest item ids (vocabs.json[item][item] positions "
                                "+ 1), most recent last, left-padded with 0"})  # fmt: skip
    return out


def export_bundle(
    model: nn.Module, ckpt: dict, L: Layout, out_dir: Path, dynamo: bool = False
) -> dict:
    """Write the bundle of run `L` into out_dir; return figures for the manifest."""
    fields = load_schema(L.preprocess)["user"]
    history_len = history_length(model)
    users = pd.read_parquet(L.users)
    example = {k: v[1:3] for k, v in feature_tensors(users, fields).items()}
    names = [f.name for f in fields]
    if history_len:
        example[HISTORY] = torch.zeros((len(example[names[0]]), history_len), dtype=torch.int64)
        names.append(HISTORY)
    export_onnx(model, example, names, out_dir / FILES.user_tower, dynamo)
    with torch.inference_mode():
        dim = int(model.user_vectors(example).shape[1])
    vocabs = json.loads(L.vocabs.read_text())
    item_ids = np.load(L.ids("item"))
    raw_items = [vocabs["item"]["item"][i - 1] for i in item_ids.tolist()]
    (out_dir / FILES.bundle_item_ids).write_text(json.dumps(raw_items))
    shutil.copyfile(L.vocabs, out_dir / L.vocabs.name)
    shutil.copyfile(L.faiss_index, out_dir / L.faiss_index.name)
    spec = {
        "run": L.run,
        "user_tower": FILES.user_tower,
        "inputs": _inputs(fields, history_len),
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", dim]},
        "index": {
            "file": L.faiss_index.name,
            "metric": "inner_product",
            "rows": f"row i holds {FILES.bundle_item_ids}[i]",
        },  # fmt: skip
        "similarity": ckpt["args"].get("similarity", "cosine"),
        "vocabularies": f"{FILES.vocabs}: {{side: {{feature: [raw values]}}}}; id = position + 1",
        "user_id_feature": fields[0].name,
    }
    (out_dir / FILES.serving).write_text(json.dumps(spec, indent=1))
    return {"inputs": len(names), "dim": dim, "items": len(raw_items)}
