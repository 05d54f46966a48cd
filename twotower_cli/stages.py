"""One short function per CLI stage: read paths from the config, call the library, write
artifacts and a manifest. `twotower <stage>` runs `STAGES[stage](cfg)`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli import losses
from twotower_cli.artifacts import (
    StageOutput,
    mark_stage_start,
    read_manifest,
    read_split,
    require,
    seen_rows,
)
from twotower_cli.baselines import BaselineSettings, baseline_metrics
from twotower_cli.data.examples import Timeline, training_examples
from twotower_cli.data.preprocess import SplitSettings
from twotower_cli.data.preprocess import preprocess as preprocess_tables
from twotower_cli.data.tables import feature_tensors, load_schema, save_encoded
from twotower_cli.errors import TwoTowerError
from twotower_cli.metrics import sorted_unique
from twotower_cli.retrieval import (
    EvalSet,
    build_index,
    empty_index,
    evaluate_index,
    set_search_params,
)
from twotower_cli.samplers import EXPOSURE_KEYS, add_exposure_negatives
from twotower_cli.trainer import TrainSettings, encode_all
from twotower_cli.trainer import train as train_model


def _config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def _earlier(cfg: DictConfig, stage: str, sections: tuple = ("dataset",), ignore: tuple = ()):
    """The output dir of an earlier `stage` for this config, made with the same settings in
    `sections` (artifacts.require: else a one-line error naming the command to run)."""
    made_with = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in sections}
    return require(cfg.paths[f"{stage}_dir"], stage, made_with, ignore)


def _tables(prep_dir: Path) -> tuple[dict, dict, dict]:
    schema = load_schema(prep_dir)
    users = feature_tensors(pd.read_parquet(prep_dir / "users.parquet"), schema["user"])
    items = feature_tensors(pd.read_parquet(prep_dir / "items.parquet"), schema["item"])
    return schema, users, items


def preprocess(cfg: DictConfig) -> dict:
    # partial, then call: Hydra would wrap the loader's TwoTowerError in its own exception
    raw = instantiate(cfg.dataset.load, _partial_=True)()
    enc, parts, counts = preprocess_tables(
        raw, cfg.dataset.label, SplitSettings(**cfg.dataset.split), cfg.dataset.get("tasks") or ()
    )
    with StageOutput("preprocess", cfg.paths.preprocess_dir, _config(cfg), []) as out:
        save_encoded(enc, out.tmp)
        for name, frame in parts.items():
            frame.to_parquet(out.path(f"{name}.parquet"), index=False)
        out.figures = {**counts, "n_users": enc.n_users, "n_items": enc.n_items}
    print(f"preprocess: {json.dumps(out.figures)}")
    return out.figures


def _sampler(cfg: DictConfig):
    """The configured sampler, and the exposure settings every sampler accepts (config.yaml)."""
    conf = OmegaConf.to_container(cfg.sampler, resolve=True)
    exposure = {k: conf.pop(k) for k in EXPOSURE_KEYS if k in conf}
    return instantiate(conf), exposure


def sample(cfg: DictConfig) -> dict:
    prep_dir = _earlier(cfg, "preprocess")
    n_items = read_manifest(prep_dir)["figures"]["n_items"]
    sampler, exposure = _sampler(cfg)
    items = pd.read_parquet(prep_dir / "items.parquet")
    sampler.fit(read_split(prep_dir, "train"), n_items, items)
    with StageOutput("sample", cfg.paths.sample_dir, _config(cfg), [prep_dir]) as out:
        examples = sampler.examples()
        examples.to_parquet(out.path("examples.parquet"), index=False)
        np.save(out.path("item_log_q.npy"), sampler.item_log_q_)
        negatives, n_exposures = sampler.negatives(), 0
        if exposure.get("use_exposures"):
            negatives, n_exposures = add_exposure_negatives(
                examples, negatives, prep_dir / "exposures.parquet",
                exposure.get("exposures_per_positive", 1.0), cfg.seed,
            )  # fmt: skip
        if negatives is not None:  # [n_examples, n_neg]: row i holds example i's negatives
            np.save(out.path("negatives.npy"), negatives)
        n_neg = 0 if negatives is None else int(negatives.shape[1])
        out.figures = {"examples": len(examples), "loss": sampler.loss, "n_neg": n_neg,
                       "exposure_negatives": n_exposures}  # fmt: skip
    print(f"sample: {json.dumps(out.figures)}")
    return out.figures


def _build_model(model_cfg, schema: dict):
    """The configured tower; a bad model value is a one-line error, not Hydra's traceback."""
    try:
        return instantiate(model_cfg, schema=schema)
    except InstantiationException as err:
        raise TwoTowerError(f"model: {err.__cause__ or err}") from err


def _load_model(train_dir: Path):
    ckpt = torch.load(train_dir / "model.pt", weights_only=True)
    model = _build_model(ckpt["model"], ckpt["schema"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _with_history(model, users: dict, seen: pd.DataFrame) -> dict:
    """The user table plus each user's latest items in `seen` when the model reads history."""
    if not model.history_len:
        return users
    n_users = len(users["user"]) - 1
    hist = Timeline(seen, n_users).per_user(n_users, model.history_len)
    return {**users, "history": torch.from_numpy(hist)}


def _examples(model, prep_dir: Path, sample_dir: Path, n_users: int, n_items: int,
              seed: int, history_mode: str) -> dict[str, torch.Tensor]:  # fmt: skip
    """The sampler's examples plus what the model reads per example (task labels, history)."""
    tasks = tuple(model.tasks)
    if tasks and not (prep_dir / "tasks_train.parquet").exists():
        raise TwoTowerError(f"{prep_dir}: no tasks_train.parquet; set dataset.tasks={list(tasks)}"
                            " and rerun `twotower preprocess`")  # fmt: skip
    cols = training_examples(
        pd.read_parquet(sample_dir / "examples.parquet"), read_split(prep_dir, "train"),
        n_users, n_items, tasks,
        read_split(prep_dir, "tasks_train") if tasks else None, model.history_len, seed,
        history_mode,
    )  # fmt: skip
    if (sample_dir / "negatives.npy").exists():  # [n_examples, n_neg]: example i's negatives
        neg = np.load(sample_dir / "negatives.npy")
        # rows appended for task-only positives borrow the negatives of a sampled example
        extra = np.arange(len(cols["user"]) - len(neg)) % len(neg)
        cols["neg"] = np.concatenate([neg, neg[extra]])
    return {c: torch.from_numpy(v) for c, v in cols.items()}


def fit(cfg: DictConfig) -> tuple:
    """Train the configured model in memory (what `train` saves, and what each `tune` trial
    scores): (model, per-epoch history, settings, loss name, schema, users, items, inputs)."""
    prep_dir = _earlier(cfg, "preprocess")
    sampler = _sampler(cfg)[0]
    sample_dir = _earlier(cfg, "sample", ("dataset", "sampler"),
                          tuple(f"sampler.{k}" for k in sampler.train_only))  # fmt: skip
    torch.manual_seed(cfg.seed)
    schema, users, items = _tables(prep_dir)
    n_items = len(next(iter(items.values()))) - 1
    model = _build_model(cfg.model, {s: [vars(f) for f in fs] for s, fs in schema.items()})
    loss_fn, loss_name = losses.resolve(cfg.loss, read_manifest(sample_dir)["figures"]["loss"])
    # an index the vectors cannot go into fails now, not at `twotower index` after training
    empty_index(cfg.index.factory, encode_all(model, items, np.ones(1, np.int64), "item").shape[1])
    n_users = len(users["user"]) - 1
    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    history_mode = train_cfg.pop("history_mode", "causal")  # builds examples; not the loop's
    examples = _examples(model, prep_dir, sample_dir, n_users, n_items, cfg.seed, history_mode)
    log_q = torch.from_numpy(np.load(sample_dir / "item_log_q.npy"))
    batch_fn = sampler.batch_fn(log_q, cfg.seed)
    train_pos = read_split(prep_dir, "train")
    users = _with_history(model, users, train_pos)
    valid = EvalSet.build(read_split(prep_dir, "valid"), train_pos, n_items)
    settings = TrainSettings(**train_cfg, seed=cfg.seed)
    history = train_model(
        model, loss_fn, examples, users, items, valid, n_items, settings, batch_fn
    )
    return model, history, settings, loss_name, schema, users, items, [prep_dir, sample_dir]


def train(cfg: DictConfig) -> dict:
    model, history, settings, loss_name, schema, users, items, inputs = fit(cfg)
    with StageOutput("train", cfg.paths.train_dir, _config(cfg), inputs) as out:
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
        for name, obj in model.artifacts(users, items).items():
            out.path(f"{name}.json").write_text(json.dumps(obj, indent=1))
        best = max(h[f"valid_recall@{settings.early_stop_k}"] for h in history)
        out.figures = {"loss": loss_name, "epochs": len(history), "best_valid": best,
                       "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    print(f"train: {json.dumps(out.figures)}")
    return out.figures


def embed(cfg: DictConfig) -> dict:
    prep_dir = _earlier(cfg, "preprocess")
    train_dir = _earlier(cfg, "train")
    model, _ = _load_model(train_dir)
    _, users, items = _tables(prep_dir)
    users = _with_history(model, users, seen_rows(prep_dir))
    item_ids = np.arange(1, len(next(iter(items.values()))), dtype=np.int64)
    if (prep_dir / "candidates.npy").exists():
        item_ids = np.load(prep_dir / "candidates.npy")  # evaluation ranks only these
    user_ids = sorted_unique(read_split(prep_dir, "test")["user"].to_numpy())
    with StageOutput("embed", cfg.paths.embed_dir, _config(cfg), [prep_dir, train_dir]) as out:
        np.save(out.path("item_vectors.npy"), encode_all(model, items, item_ids, "item"))
        np.save(out.path("item_ids.npy"), item_ids)
        np.save(out.path("user_vectors.npy"), encode_all(model, users, user_ids, "user"))
        np.save(out.path("user_ids.npy"), user_ids)
        out.figures = {"items": len(item_ids), "users": len(user_ids)}
    return out.figures


def index(cfg: DictConfig) -> dict:
    embed_dir = _earlier(cfg, "embed")
    vectors = np.load(embed_dir / "item_vectors.npy")
    idx = build_index(vectors, cfg.index.factory, cfg.index.nprobe, cfg.index.ef_search)
    with StageOutput("index", cfg.paths.index_dir, _config(cfg), [embed_dir]) as out:
        faiss.write_index(idx, str(out.path("items.faiss")))
        out.figures = {"factory": cfg.index.factory, "items": int(idx.ntotal)}
    return out.figures


def evaluate(cfg: DictConfig) -> dict:
    prep_dir = _earlier(cfg, "preprocess")
    embed_dir = _earlier(cfg, "embed")
    index_dir = _earlier(cfg, "index")
    idx = faiss.read_index(str(index_dir / "items.faiss"))
    set_search_params(idx, cfg.index.nprobe, cfg.index.ef_search)
    n_items = read_manifest(prep_dir)["figures"]["n_items"]
    item_ids = np.load(embed_dir / "item_ids.npy")  # the index's rows (candidates or all)
    test = read_split(prep_dir, "test")
    seen = seen_rows(prep_dir)
    ev = EvalSet.build(test, seen, n_items)
    user_ids, u = np.load(embed_dir / "user_ids.npy"), np.load(embed_dir / "user_vectors.npy")
    if not np.array_equal(user_ids, ev.users):
        raise TwoTowerError(f"{embed_dir}: user vectors do not match the test users; rerun embed")
    ks, e = list(cfg.eval.ks), cfg.eval
    metrics = {"model": evaluate_index(idx, u, ev, ks, n_items, ids=item_ids)}
    baselines, skipped = baseline_metrics(
        BaselineSettings(list(e.baselines), e.ease_max_items, list(e.ease_lambdas),
                         cfg.train.early_stop_k),
        read_split(prep_dir, "train"), read_split(prep_dir, "valid"),
        ev, ks, n_items, item_ids,
    )  # fmt: skip
    metrics.update(baselines, **({"baselines_skipped": skipped} if skipped else {}))
    metrics.update(_sub_retrieval_metrics(cfg.paths.train_dir, prep_dir, embed_dir, ks, n_items))
    with StageOutput("evaluate", cfg.paths.evaluate_dir, _config(cfg),
                     [prep_dir, embed_dir, index_dir]) as out:  # fmt: skip
        out.path("metrics.json").write_text(json.dumps(metrics, indent=1))
        out.figures = {"users": len(ev.users), **{f"model/{k}": v for k, v in
                       metrics["model"].items()}}  # fmt: skip
    print(format_table(metrics, ks))
    return metrics


def _sub_retrieval_metrics(train_dir: str, prep_dir: Path, embed_dir: Path, ks: list[int],
                           n_items: int) -> dict:  # fmt: skip
    """`task/<name>` metrics for each retrieval the model names (`sub_retrievals`): an exact
    search over its columns, scored on that task's held-out positives, excluding every item
    the user has met in train + validation."""
    model, _ = _load_model(require(train_dir, "train"))
    subs = model.sub_retrievals()
    if not subs:
        return {}
    if not (prep_dir / "tasks_test.parquet").exists():
        raise TwoTowerError(f"{prep_dir}: no tasks_test.parquet; rerun `twotower preprocess`")
    test = read_split(prep_dir, "tasks_test")
    seen = seen_rows(prep_dir, "tasks_")
    user_ids, u = np.load(embed_dir / "user_ids.npy"), np.load(embed_dir / "user_vectors.npy")
    v = np.load(embed_dir / "item_vectors.npy")
    out = {}
    for name, (a, b) in subs.items():
        if name not in test.columns:
            raise TwoTowerError(f"{prep_dir / 'tasks_test.parquet'}: no column {name!r}")
        ev = EvalSet.build(test[test[name] > 0], seen, n_items)
        rows = np.searchsorted(user_ids, ev.users)
        if not np.array_equal(user_ids[rows.clip(max=len(user_ids) - 1)], ev.users):
            raise TwoTowerError(f"{embed_dir}: user vectors miss task {name!r} users; rerun embed")
        out[f"task/{name}"] = evaluate_index(build_index(v[:, a:b], "Flat"), u[rows, a:b], ev,
                                             ks, n_items)  # fmt: skip
    return out


def format_table(metrics: dict, ks: list[int]) -> str:
    """A Markdown table: one row per metric@k, one column per ranked run."""
    names = ["recall", "precision", "ndcg", "hit_rate", "coverage"]
    runs = [r for r in metrics if f"recall@{ks[0]}" in metrics[r]]  # not baselines_skipped
    lines = ["| metric | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for k in ks:
        for n in names:
            cells = " | ".join(f"{metrics[r][f'{n}@{k}']:.4f}" for r in runs)
            lines.append(f"| {n}@{k} | {cells} |")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    """All six stages in order; returns evaluate's metrics."""
    for stage in (preprocess, sample, train, embed, index, evaluate):
        mark_stage_start()
        result = stage(cfg)
    return result


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


def tune(cfg: DictConfig) -> dict:
    from twotower_cli.tune import run_tune

    return run_tune(cfg)


def export(cfg: DictConfig) -> dict:
    from twotower_cli.export import export_bundle

    prep_dir = _earlier(cfg, "preprocess")
    train_dir = _earlier(cfg, "train")
    embed_dir = _earlier(cfg, "embed")
    index_dir = _earlier(cfg, "index")
    model, ckpt = _load_model(train_dir)
    inputs = [prep_dir, train_dir, embed_dir, index_dir]
    with StageOutput("export", cfg.paths.export_dir, _config(cfg), inputs) as out:
        out.figures = export_bundle(model, ckpt, prep_dir, embed_dir, index_dir, out.tmp,
                                    cfg.paths.run, cfg.serve.export_dynamo)  # fmt: skip
    print(f"export: {cfg.paths.export_dir} {json.dumps(out.figures)}")
    return out.figures


STAGES = {
    f.__name__: f
    for f in (preprocess, sample, train, embed, index, evaluate, run, serve, export, tune)
}
