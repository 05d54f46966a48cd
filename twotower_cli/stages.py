"""One short function per CLI stage: read paths from the config, call the library, write
artifacts and a manifest. `twotower <stage>` runs `STAGES[stage](cfg)`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli import losses
from twotower_cli.artifacts import StageOutput, mark_stage_start, read_manifest, require
from twotower_cli.data.preprocess import SplitSettings
from twotower_cli.data.preprocess import preprocess as preprocess_tables
from twotower_cli.data.tables import feature_tensors, load_schema, save_encoded
from twotower_cli.errors import TwoTowerError
from twotower_cli.retrieval import (
    EvalSet,
    build_index,
    evaluate_index,
    evaluate_ranked,
    popularity_ranking,
)
from twotower_cli.trainer import TrainSettings, encode_all
from twotower_cli.trainer import train as train_model

SPLITS = ("train", "valid", "test")


def _config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def _read_split(prep_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(prep_dir / f"{name}.parquet")


def _tables(prep_dir: Path) -> tuple[dict, dict, dict]:
    schema = load_schema(prep_dir)
    users = feature_tensors(pd.read_parquet(prep_dir / "users.parquet"), schema["user"])
    items = feature_tensors(pd.read_parquet(prep_dir / "items.parquet"), schema["item"])
    return schema, users, items


def preprocess(cfg: DictConfig) -> dict:
    raw = instantiate(cfg.dataset.load)
    enc, parts, counts = preprocess_tables(
        raw, cfg.dataset.label, SplitSettings(**cfg.dataset.split)
    )
    with StageOutput("preprocess", cfg.paths.preprocess_dir, _config(cfg), []) as out:
        save_encoded(enc, out.tmp)
        for name, frame in parts.items():
            frame.to_parquet(out.path(f"{name}.parquet"), index=False)
        out.figures = {**counts, "n_users": enc.n_users, "n_items": enc.n_items}
    print(f"preprocess: {json.dumps(out.figures)}")
    return out.figures


def sample(cfg: DictConfig) -> dict:
    prep_dir = require(cfg.paths.preprocess_dir, "preprocess")
    n_items = read_manifest(prep_dir)["figures"]["n_items"]
    sampler = instantiate(cfg.sampler).fit(_read_split(prep_dir, "train"), n_items)
    with StageOutput("sample", cfg.paths.sample_dir, _config(cfg), [prep_dir]) as out:
        examples = sampler.examples()
        examples.to_parquet(out.path("examples.parquet"), index=False)
        np.save(out.path("item_log_q.npy"), sampler.item_log_q_)
        out.figures = {"examples": len(examples), "loss": sampler.loss}
    print(f"sample: {json.dumps(out.figures)}")
    return out.figures


def _load_model(train_dir: Path):
    ckpt = torch.load(train_dir / "model.pt", weights_only=True)
    model = instantiate(ckpt["model"], schema=ckpt["schema"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def train(cfg: DictConfig) -> dict:
    prep_dir = require(cfg.paths.preprocess_dir, "preprocess")
    sample_dir = require(cfg.paths.sample_dir, "sample")
    torch.manual_seed(cfg.seed)
    schema, users, items = _tables(prep_dir)
    n_items = len(next(iter(items.values()))) - 1
    model = instantiate(cfg.model, schema={s: [vars(f) for f in fs] for s, fs in schema.items()})
    loss_fn, loss_name = losses.resolve(cfg.loss, read_manifest(sample_dir)["figures"]["loss"])
    ex = pd.read_parquet(sample_dir / "examples.parquet")
    examples = {c: torch.from_numpy(ex[c].to_numpy().copy()) for c in ("user", "item", "label")}
    log_q = torch.from_numpy(np.load(sample_dir / "item_log_q.npy"))
    train_pos = _read_split(prep_dir, "train")
    valid = EvalSet.build(_read_split(prep_dir, "valid"), train_pos, n_items)
    settings = TrainSettings(**cfg.train, seed=cfg.seed)
    history = train_model(model, loss_fn, examples, users, items, valid, n_items, settings, log_q)
    with StageOutput("train", cfg.paths.train_dir, _config(cfg), [prep_dir, sample_dir]) as out:
        torch.save(
            {
                "state_dict": model.state_dict(),
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "schema": {s: [vars(f) for f in fs] for s, fs in schema.items()},
                "config": _config(cfg),
            },
            out.path("model.pt"),
        )
        (out.path("history.json")).write_text(json.dumps(history, indent=1))
        best = max(h[f"valid_recall@{settings.early_stop_k}"] for h in history)
        out.figures = {"loss": loss_name, "epochs": len(history), "best_valid": best,
                       "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    print(f"train: {json.dumps(out.figures)}")
    return out.figures


def embed(cfg: DictConfig) -> dict:
    prep_dir = require(cfg.paths.preprocess_dir, "preprocess")
    train_dir = require(cfg.paths.train_dir, "train")
    model, _ = _load_model(train_dir)
    _, users, items = _tables(prep_dir)
    item_ids = np.arange(1, len(next(iter(items.values()))), dtype=np.int64)
    user_ids = np.unique(_read_split(prep_dir, "test")["user"].to_numpy())
    with StageOutput("embed", cfg.paths.embed_dir, _config(cfg), [prep_dir, train_dir]) as out:
        np.save(out.path("item_vectors.npy"), encode_all(model, items, item_ids, "item"))
        np.save(out.path("item_ids.npy"), item_ids)
        np.save(out.path("user_vectors.npy"), encode_all(model, users, user_ids, "user"))
        np.save(out.path("user_ids.npy"), user_ids)
        out.figures = {"items": len(item_ids), "users": len(user_ids)}
    return out.figures


def index(cfg: DictConfig) -> dict:
    embed_dir = require(cfg.paths.embed_dir, "embed")
    import faiss

    vectors = np.load(embed_dir / "item_vectors.npy")
    idx = build_index(vectors, cfg.index.factory, cfg.index.nprobe, cfg.index.ef_search)
    with StageOutput("index", cfg.paths.index_dir, _config(cfg), [embed_dir]) as out:
        faiss.write_index(idx, str(out.path("items.faiss")))
        out.figures = {"factory": cfg.index.factory, "items": int(idx.ntotal)}
    return out.figures


def evaluate(cfg: DictConfig) -> dict:
    import faiss

    from twotower_cli.retrieval import set_search_params

    prep_dir = require(cfg.paths.preprocess_dir, "preprocess")
    embed_dir = require(cfg.paths.embed_dir, "embed")
    index_dir = require(cfg.paths.index_dir, "index")
    idx = faiss.read_index(str(index_dir / "items.faiss"))
    set_search_params(idx, cfg.index.nprobe, cfg.index.ef_search)
    n_items = idx.ntotal
    test = _read_split(prep_dir, "test")
    seen = pd.concat([_read_split(prep_dir, "train"), _read_split(prep_dir, "valid")])
    ev = EvalSet.build(test, seen, n_items)
    user_ids, u = np.load(embed_dir / "user_ids.npy"), np.load(embed_dir / "user_vectors.npy")
    if not np.array_equal(user_ids, ev.users):
        raise TwoTowerError(f"{embed_dir}: user vectors do not match the test users; rerun embed")
    ks = list(cfg.eval.ks)
    counts = np.bincount(seen["item"].to_numpy(), minlength=n_items + 1)[1:]
    depth = min(n_items, max(ks) + ev.max_exclude)
    metrics = {
        "model": evaluate_index(idx, u, ev, ks, n_items),
        "popularity": evaluate_ranked(
            popularity_ranking(counts, len(ev.users), depth), ev, ks, n_items
        ),  # fmt: skip
    }
    with StageOutput("evaluate", cfg.paths.evaluate_dir, _config(cfg),
                     [prep_dir, embed_dir, index_dir]) as out:  # fmt: skip
        out.path("metrics.json").write_text(json.dumps(metrics, indent=1))
        out.figures = {"users": len(ev.users), **{f"model/{k}": v for k, v in
                       metrics["model"].items()}}  # fmt: skip
    print(format_table(metrics, ks))
    return metrics


def format_table(metrics: dict, ks: list[int]) -> str:
    """A Markdown table: one row per metric@k, one column per ranked run."""
    names = ["recall", "precision", "ndcg", "hit_rate", "coverage"]
    runs = list(metrics)
    lines = ["| metric | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for k in ks:
        for n in names:
            cells = " | ".join(f"{metrics[r][f'{n}@{k}']:.4f}" for r in runs)
            lines.append(f"| {n}@{k} | {cells} |")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    for stage in (preprocess, sample, train, embed, index):
        mark_stage_start()
        stage(cfg)
    mark_stage_start()
    return evaluate(cfg)


def serve(cfg: DictConfig) -> dict:
    from twotower_cli import serve as serving

    p = cfg.paths
    settings = serving.ServeSettings(**cfg.serve)
    dirs = serving.ServeDirs(
        *(Path(d) for d in (p.preprocess_dir, p.train_dir, p.embed_dir, p.index_dir)),
        p.run, cfg.index.nprobe, cfg.index.ef_search, settings.runtime,
    )  # fmt: skip
    state = serving.ServeState(partial(serving.load_bundle, dirs, _load_model))
    serving.run_server(state, settings)
    return {}


def export(cfg: DictConfig) -> dict:
    from twotower_cli.export import export_bundle

    prep_dir = require(cfg.paths.preprocess_dir, "preprocess")
    train_dir = require(cfg.paths.train_dir, "train")
    embed_dir = require(cfg.paths.embed_dir, "embed")
    index_dir = require(cfg.paths.index_dir, "index")
    model, ckpt = _load_model(train_dir)
    inputs = [prep_dir, train_dir, embed_dir, index_dir]
    with StageOutput("export", cfg.paths.export_dir, _config(cfg), inputs) as out:
        out.figures = export_bundle(model, ckpt, prep_dir, embed_dir, index_dir, out.tmp,
                                    cfg.paths.run, cfg.serve.export_dynamo)  # fmt: skip
    print(f"export: {cfg.paths.export_dir} {json.dumps(out.figures)}")
    return out.figures


STAGES = {
    f.__name__: f for f in (preprocess, sample, train, embed, index, evaluate, run, serve, export)
}
