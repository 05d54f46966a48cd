"""One short function per CLI stage: read paths from the config, call the library, write
artifacts and a manifest. `twotower <stage>` runs `STAGES[stage](cfg)`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import faiss
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts import checkpoint, tracking
from twotower_cli.artifacts.store import (
    StageOutput,
    check_chain,
    is_current,
    read_manifest,
    read_split,
    seen_rows,
    sweep_partials,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import sorted_unique
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.core.settings import TrainSettings
from twotower_cli.data.protocol import settings as protocol_settings
from twotower_cli.models.inputs import load_tables
from twotower_cli.pipeline.prep import earlier as _earlier
from twotower_cli.pipeline.prep import preprocess, sample, sources_current
from twotower_cli.pipeline.prep import resolved as _config
from twotower_cli.pipeline.sections import (
    HOW_TRAINED,
    MODEL_MADE_WITH,
    output_view,
)
from twotower_cli.retrieval import pools
from twotower_cli.retrieval.baselines import BaselineSettings
from twotower_cli.retrieval.evaluation import evaluate_run, format_table
from twotower_cli.retrieval.search import build_index, read_index
from twotower_cli.training import distributed, fitting
from twotower_cli.training.examples import with_history
from twotower_cli.training.resume import Resume
from twotower_cli.training.trainer import encode_all


def train(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    dist_settings = distributed.settings(OmegaConf.to_container(cfg.train, resolve=True))
    if distributed.should_launch(dist_settings, cfg.train.batch_size, cfg.model.get("tasks")):
        distributed.launch(dist_settings, train_worker, _config(cfg))
        tracking.active().log_finished(L.train)  # the workers track nothing: read back
        return read_manifest(L.train)["figures"]
    group = distributed.init(dist_settings, cfg.train.device)
    if group.active:
        print(f"train: rank {group.rank} of {group.world_size}, pid {os.getpid()}, "
              f"backend {group.backend}", flush=True)  # fmt: skip
    prep_dir, sample_dir = train_inputs(cfg)
    # only rank 0 writes (and holds the stage dir's lock); the other ranks train beside it
    writer = StageOutput("train", L.train, _config(cfg), [prep_dir, sample_dir])
    with writer if group.is_main else nullcontext(writer) as out:
        resume = _resume(cfg, L, [prep_dir, sample_dir]) if cfg.train.resume == "auto" else None
        settings = fit_settings(cfg)
        f = fitting.fit(settings, prep_dir, sample_dir, group, resume, tracking.active().log_epoch)
        again = fitting.refit(settings, f, prep_dir, sample_dir, group)  # train.refit
        distributed.barrier(group)  # every rank is done before rank 0 writes
        if not group.is_main:
            return {}
        final, made_with = (again, {**_config(cfg), "fit_on": "train+valid"}) if again else (
            f, _config(cfg))  # fmt: skip
        checkpoint.save(out.path(FILES.model), final.model, f.key, f.args, f.schema, made_with)
        out.path(FILES.history).write_text(json.dumps(f.history, indent=1))
        for name, obj in final.model.artifacts(final.users, final.items).items():
            out.path(FILES.model_artifact(name)).write_text(json.dumps(obj, indent=1))
        out.figures = {**fitting.figures(f, again, cfg.fit_on),
                       **distributed.figures(group, f.settings.batch_size, f.history)}  # fmt: skip
    shutil.rmtree(L.resume, ignore_errors=True)  # the finished model supersedes it
    print(f"train: {json.dumps(out.figures)}")
    return out.figures


def fit_settings(cfg: DictConfig) -> fitting.FitSettings:
    """What fitting.fit reads of the composed config, as plain values."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    train["optimizer"] = instantiate(cfg.train.optimizer)
    return fitting.FitSettings(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        train=TrainSettings(**train),
        sampler=OmegaConf.to_container(cfg.sampler, resolve=True),
        loss=cfg.loss, fit_on=cfg.fit_on, seed=cfg.seed, index_factory=cfg.index.factory,
        freshness_prior=cfg.eval.freshness_prior)  # fmt: skip


def train_inputs(cfg: DictConfig) -> tuple[Path, Path]:
    """The preprocess and sample dirs training reads, checked to be one chain."""
    prep_dir = _earlier(cfg, "preprocess")
    train_only = tuple(f"sampler.{k}" for k in instantiate(cfg.sampler).train_only)
    sample_dir = _earlier(cfg, "sample", ("dataset", "sampler", "exposures", "fit_on"),
                          train_only)  # fmt: skip
    check_chain([prep_dir, sample_dir])
    return prep_dir, sample_dir


def _resume(cfg: DictConfig, L: Layout, inputs: list[Path]) -> Resume:
    """Per-epoch state of this training run: fingerprinted by what the trained model depends
    on (the train sections of the config and the ids of its inputs), so a state made with other
    settings or from other inputs is never resumed."""
    resolved = _config(cfg)
    made_of = output_view("train", resolved)
    made_of["inputs"] = [read_manifest(d).get("id") for d in inputs]
    for key in ("resume", "backend", "dist_timeout_s"):  # how, not what, it trains
        made_of["train"].pop(key, None)
    digest = hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode())
    return Resume(L.resume, digest.hexdigest())


def train_worker(config: dict) -> None:
    """One rank of `twotower train train.nproc=N` (started by distributed.launch)."""
    distributed.set_threads(config["threads"])
    try:
        train(OmegaConf.create(config))
    finally:
        distributed.shutdown()


def embed(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    prep_dir, train_dir = _model_inputs(cfg, ("preprocess", "train"))
    with StageOutput("embed", L.embed, _config(cfg), [prep_dir, train_dir]) as out:
        model, ckpt = checkpoint.load(L.model)
        _, users, items = load_tables(prep_dir)
        n_items = len(items["item"]) - 1  # row 0 of a table is padding
        made = ckpt["config"]  # the model's own config: the items as it trained on them
        items = fitting.items_as_trained(items, prep_dir, made["train"].get("item_id_dropout", 0),
                                         made.get("fit_on", "train"), n_items)  # fmt: skip
        if model.history_len:  # each user's latest seen items, as serving reads them
            seen = seen_rows(prep_dir, columns=["user", "item", "timestamp"])
            users = with_history(users, seen, model.history_len)
        item_ids = np.arange(1, n_items + 1, dtype=np.int64)
        if L.candidates.exists():
            item_ids = np.load(L.candidates)  # evaluation ranks only these
        user_ids = sorted_unique(read_split(prep_dir, "test", ["user"])["user"].to_numpy())
        v, u = (
            encode_all(model, items, item_ids, "item"),
            encode_all(model, users, user_ids, "user"),
        )
        for name, x in (("item", v), ("user", u)):
            if not np.isfinite(x).all():
                raise TwoTowerError(f"{L.model}: gives non-finite {name} vectors; retrain")
        weight = cfg.eval.freshness_prior
        prior = weight > 0 and L.item_log_prior.exists()
        if prior:
            # ranks by logit + weight * the item's freshness prior (pools.with_item_prior)
            log_prior = np.load(L.item_log_prior)[item_ids]
            u, v = pools.with_item_prior(u, v, log_prior, weight, model.logit_scale)
        np.save(out.path(FILES.vectors("item")), v)
        np.save(out.path(FILES.ids("item")), item_ids)
        np.save(out.path(FILES.vectors("user")), u)
        np.save(out.path(FILES.ids("user")), user_ids)
        out.figures = {"items": len(item_ids), "users": len(user_ids),
                       "freshness_prior": weight if prior else 0.0}  # fmt: skip
    return out.figures


def _model_inputs(cfg: DictConfig, names: tuple[str, ...]) -> list[Path]:
    """The dirs of the stages `names` after train reads: one chain, and made with this config's
    model settings (MODEL_MADE_WITH; for an index, its factory; for evaluated vectors, their
    freshness prior): an override that contradicts them is a one-line error naming the key."""
    dirs = [_earlier(cfg, s) for s in names]
    check_chain(dirs)
    for name in (n for n in names if n in ("train", "embed", "index")):
        _earlier(cfg, name, MODEL_MADE_WITH, HOW_TRAINED)
    if "index" in names:  # nprobe and ef_search are search-time settings
        _earlier(cfg, "index", ("index",), ("index.nprobe", "index.ef_search"))
    if {"embed", "index"} <= set(names):  # evaluate reports the prior the vectors hold
        _earlier(cfg, "embed", ("eval.freshness_prior",))
    return dirs


def index(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    (embed_dir,) = _model_inputs(cfg, ("embed",))
    with StageOutput("index", L.index, _config(cfg), [embed_dir]) as out:
        vectors = np.load(L.vectors("item"))
        idx = build_index(vectors, cfg.index.factory, cfg.index.nprobe, cfg.index.ef_search)
        if idx.ntotal != len(vectors):
            raise TwoTowerError(f"index holds {idx.ntotal} of {len(vectors)} item vectors")
        faiss.write_index(idx, str(out.path(FILES.faiss_index)))
        out.figures = {"factory": cfg.index.factory, "items": int(idx.ntotal)}
    return out.figures


def evaluate(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    dirs = _model_inputs(cfg, ("preprocess", "train", "embed", "index"))
    with StageOutput("evaluate", L.evaluate, _config(cfg), dirs) as out:
        idx = read_index(L.faiss_index, cfg.index.nprobe, cfg.index.ef_search)
        model, _ = checkpoint.load(L.model)
        n_items = read_manifest(L.preprocess)["figures"]["n_items"]
        ks = list(cfg.eval.ks)
        e, proto = cfg.eval, protocol_settings(cfg.dataset)
        baselines = BaselineSettings(list(e.baselines), e.ease_max_items, list(e.ease_lambdas),
                                     cfg.train.early_stop_k, list(e.knn_neighbours),
                                     mask_seen=proto.mask == "seen",
                                     refit=proto.baselines_fit == "train+valid")  # fmt: skip
        metrics = evaluate_run(idx, model, L, ks, n_items, baselines, e.trending_hours,
                               e.max_users, cfg.seed)  # fmt: skip
        out.path(FILES.metrics).write_text(json.dumps(metrics, indent=1))
        n_users = metrics.get("users_sampled", {}).get("evaluated", len(np.load(L.ids("user"))))
        out.figures = {"users": n_users,
                       **{f"model/{k}": v for k, v in metrics["model"].items()}}  # fmt: skip
    print(format_table(metrics, ks, proto.metrics))
    return metrics


def run(cfg: DictConfig) -> dict:
    """The six stages in order; one whose output is complete, intact, made with the same
    settings and from the current outputs before it is skipped (`run.force=true` redoes it).
    Returns evaluate's metrics."""
    resolved = _config(cfg)
    L = Layout.of(cfg.paths)
    inputs = {"preprocess": [], "sample": [L.preprocess], "train": [L.preprocess, L.sample],
              "embed": [L.preprocess, L.train], "index": [L.embed],
              "evaluate": [L.preprocess, L.train, L.embed, L.index]}  # fmt: skip
    train_only = tuple(f"sampler.{k}" for k in instantiate(cfg.sampler).train_only)
    for name, stage in (("preprocess", preprocess), ("sample", sample), ("train", train),
                        ("embed", embed), ("index", index), ("evaluate", evaluate)):  # fmt: skip
        out_dir = getattr(L, name)
        # a sampler's train-only settings are read by train, not sample
        view = partial(output_view, name, ignore=train_only if name == "sample" else ())
        current = (not cfg.run.force and is_current(out_dir, resolved, inputs[name], view)
                   and (name != "preprocess" or sources_current(cfg, out_dir)))  # fmt: skip
        if current:
            print(f"{name}: up to date in {out_dir} (run.force=true redoes it)")
            sweep_partials(out_dir)
            tracking.active().log_finished(out_dir)  # a tracked run still records it
            continue
        stage(cfg)
    return json.loads(L.metrics.read_text())


def serve(cfg: DictConfig) -> dict:
    from twotower_cli import serve as serving

    p = cfg.paths
    settings = serving.ServeSettings(**cfg.serve)
    sock = serving.listen(settings)  # a used port fails before the run loads
    dirs = serving.ServeDirs(Layout.of(p), cfg.index.nprobe, cfg.index.ef_search, settings.runtime)
    state = serving.ServeState(partial(serving.load_bundle, dirs), dirs.base())
    serving.run_server(state, settings, sock)
    return {}


def export(cfg: DictConfig) -> dict:
    from twotower_cli.export.bundle import export_bundle

    L = Layout.of(cfg.paths)
    dirs = _model_inputs(cfg, ("preprocess", "train", "embed", "index"))
    with StageOutput("export", L.export, _config(cfg), dirs) as out:
        model, ckpt = checkpoint.load(L.model)
        out.figures = export_bundle(model, ckpt, L, out.tmp, cfg.export.dynamo)
    print(f"export: {L.export} {json.dumps(out.figures)}")
    return out.figures


def report(cfg: DictConfig) -> dict:
    """The run's report/ (or, with report.compare, one page for those run dirs)."""
    from twotower_cli.report.diagnostics import BucketSettings, load_runs
    from twotower_cli.report.page import write_report

    r = cfg.report
    settings = BucketSettings(r.k, r.head_share, r.torso_share, tuple(r.user_quantiles),
                              r.random_per_positive, cfg.seed)  # fmt: skip
    compare = [str(d) for d in r.compare]
    out_dir = r.compare_dir if compare else cfg.paths.report_dir
    runs = load_runs(compare or [cfg.paths.run_root], settings)
    inputs = [run.dirs.evaluate for run in runs]
    with StageOutput("report", out_dir, _config(cfg), inputs) as out:
        out.figures = write_report(runs, out.tmp)
    print(f"report: {Path(out_dir) / FILES.report_page}")
    return out.figures


STAGES = {
    f.__name__: f
    for f in (preprocess, sample, train, embed, index, evaluate, run, serve, export, report)
}
