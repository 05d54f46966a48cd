"""`twotower preprocess` and `twotower sample`, the data stages. Preprocess reads the raw log
and tables, filters, splits and encodes them through DuckDB, and writes the preprocess dir
(parquet splits, vocabularies, schema, manifest); sample fits the sampler on the training
positives and writes its examples, negatives and logQ. They load the data layer and the
samplers only, not torch, faiss or the models (cli.run_stage routes them here; the samplers'
torch side, samplers/steps.py, loads at train time), so their memory is the data's;
`stages.py` holds the other stages and `run`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts.store import (
    FIT_ON,
    StageOutput,
    iter_splits,
    read_manifest,
    read_splits,
    require,
    write_batches,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.data import sources
from twotower_cli.data.engine import ENGINE_MEMORY, OUT_OF_MEMORY, Engine
from twotower_cli.data.preprocess import SplitSettings, write_preprocess
from twotower_cli.data.protocol import settings as protocol_settings
from twotower_cli.data.tables import save_encoded
from twotower_cli.pipeline import config
from twotower_cli.pipeline.sections import NOT_OUTPUT
from twotower_cli.samplers import add_exposure_negatives


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved (what manifests record)."""
    return OmegaConf.to_container(cfg, resolve=True)


def preprocess(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    with StageOutput("preprocess", L.preprocess, resolved(cfg), []) as out:
        raw = _read_raw(cfg, out)
        split, tasks = SplitSettings(**cfg.dataset.split), cfg.dataset.get("tasks") or ()
        proto = protocol_settings(cfg.dataset)
        # the log goes through DuckDB within engine_memory, spilling under paths.out/.engine
        memory = cfg.dataset.get("engine_memory", ENGINE_MEMORY)
        try:
            with Engine(memory, L.engine_spill, cfg.get("threads")) as engine:
                enc, counts, _ = write_preprocess(raw, cfg.dataset.label, split, tasks, out.tmp,
                                                  engine, proto)  # fmt: skip
        except OUT_OF_MEMORY as err:
            why = str(err).splitlines()[0][:120]
            raise TwoTowerError(f"dataset.engine_memory={memory} is too small for this log "
                                f"({why}); raise it") from None  # fmt: skip
        save_encoded(enc, out.tmp)
        out.figures = {"protocol": proto.name, **counts, "n_users": enc.n_users,
                       "n_items": enc.n_items}  # fmt: skip
    print(f"preprocess: {json.dumps(out.figures)}")
    return out.figures


def earlier(cfg: DictConfig, stage: str, sections: tuple = ("dataset",), ignore: tuple = ()):
    """The output dir of an earlier `stage` for this config, made with the same settings in
    `sections` (artifacts.require: else a one-line error naming the command to run)."""
    made_with = {}
    for name in sections:  # a section, or a dotted key (a plain value: fit_on)
        node = OmegaConf.select(cfg, name)
        made_with[name] = (OmegaConf.to_container(node, resolve=True)
                           if OmegaConf.is_config(node) else node)  # fmt: skip
    return require(cfg.paths[f"{stage}_dir"], stage, made_with, (*ignore, *NOT_OUTPUT))


def sample(cfg: DictConfig) -> dict:
    L = Layout.of(cfg.paths)
    prep_dir = earlier(cfg, "preprocess")
    with StageOutput("sample", L.sample, resolved(cfg), [prep_dir]) as out:
        n_items = read_manifest(prep_dir)["figures"]["n_items"]
        sampler = instantiate(cfg.sampler)
        if sampler.streams and not cfg.exposures.use:
            out.figures = _stream_sample(sampler, prep_dir, FIT_ON[cfg.fit_on], n_items, out)
        else:
            out.figures = _fit_sample(cfg, sampler, prep_dir, n_items, out)
    print(f"sample: {json.dumps(out.figures)}")
    return out.figures


def _fit_sample(cfg: DictConfig, sampler, prep_dir: Path, n_items: int, out: StageOutput):
    """A sampler's sample with the training split in memory (explicit negatives, exposures)."""
    L, s = Layout.of(cfg.paths), cfg.sampler
    band = {}
    if sampler.needs_band:  # faiss ranks the band: loaded for sampler=hard kind=mined alone
        from twotower_cli.samplers.mining import mined_band

        band = {"band_items": mined_band(s.source_dir, s.source_run, n_items, tuple(s.band))}
    train = read_splits(prep_dir, FIT_ON[cfg.fit_on])
    sampler.fit(train, n_items, pd.read_parquet(L.items), **band)
    examples = sampler.examples()
    examples.to_parquet(out.path(FILES.examples), index=False)
    np.save(out.path(FILES.item_log_q), sampler.item_log_q_)
    negatives, n_exposures = sampler.negatives(), 0
    if cfg.exposures.use:
        negatives, n_exposures = add_exposure_negatives(
            examples, negatives, L.exposures, cfg.exposures.per_positive, cfg.seed
        )
    if negatives is not None:  # [n_examples, n_neg]: row i holds example i's negatives
        np.save(out.path(FILES.negatives), negatives)
    n_neg = 0 if negatives is None else int(negatives.shape[1])
    return {"examples": len(examples), "loss": sampler.loss, "n_neg": n_neg,
            "exposure_negatives": n_exposures}  # fmt: skip


def _stream_sample(sampler, prep_dir: Path, splits: tuple, n_items: int,
                   out: StageOutput) -> dict:  # fmt: skip
    """An in-batch sampler's sample in one bounded pass (its examples are the positives)."""
    batches = iter_splits(prep_dir, splits, ["user", "item"])
    n = sampler.fit_stream(batches, n_items, partial(write_batches, out.path(FILES.examples)))
    np.save(out.path(FILES.item_log_q), sampler.item_log_q_)
    return {"examples": n, "loss": sampler.loss, "n_neg": 0, "exposure_negatives": 0}


def _read_raw(cfg: DictConfig, out: StageOutput):
    """The loader's RawData; `out.sources`: the raw files' identity taken before they are read
    (and of any the loader fetched), refused if a file changed while it was read."""
    own_paths = config.dataset_paths(cfg)
    load = _load_args(cfg, own_paths)
    before = sources.identify(sources.raw_files(load))
    # partial, then call: Hydra would wrap the loader's TwoTowerError in its own exception
    raw = instantiate(cfg.dataset.load, _partial_=True)(**own_paths)
    sources.check_unchanged_since(before, "preprocess")
    known = {e["path"] for e in before}
    fetched = [p for p in sources.raw_files(load) if str(p) not in known]
    out.sources = [*before, *sources.identify(fetched)]
    return raw


def _load_args(cfg: DictConfig, own_paths: dict) -> dict:
    """dataset.load as the loader gets it: relative paths in a --config-dir dataset YAML read
    against that YAML (`own_paths`: config.dataset_paths)."""
    return {**OmegaConf.to_container(cfg.dataset.load, resolve=True), **own_paths}


def sources_current(cfg: DictConfig, prep_dir: Path) -> bool:
    """Whether the raw files are the ones preprocess read (`run`'s check; a line says why not)."""
    files = sources.raw_files(_load_args(cfg, config.dataset_paths(cfg)))
    why = sources.changed(read_manifest(prep_dir).get("sources"), files)
    if why:
        print(f"preprocess: {why}: redoing it", flush=True)
    return why is None
