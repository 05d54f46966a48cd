"""`twotower preprocess`: read the raw log and tables, filter, split and encode them through
DuckDB, and write the preprocess dir (parquet splits, vocabularies, schema, manifest). It loads
the data layer only, not torch, faiss or the models (cli.run_stage routes the stage here), so
its memory is the data's; `stages.py` holds the other stages and `run`."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts.store import StageOutput, read_manifest
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.data import sources
from twotower_cli.data.engine import ENGINE_MEMORY, OUT_OF_MEMORY, Engine
from twotower_cli.data.preprocess import SplitSettings, write_preprocess
from twotower_cli.data.protocol import settings as protocol_settings
from twotower_cli.data.tables import save_encoded
from twotower_cli.pipeline import config


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
