"""The config schema (`twotower <stage>` composes against it): the settings dataclasses are
registered in Hydra's ConfigStore, so a value of the wrong type (`train.lr=fast`) fails at
composition, and `check` enforces their bounds (`train.batch_size=0`) before a stage runs. Both
raise one ConfigError naming the key."""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from twotower_cli.core.errors import ConfigError
from twotower_cli.core.layout import PathsSettings
from twotower_cli.core.settings import (
    TRACKERS,
    EvalSettings,
    ExportSettings,
    ExposureSettings,
    HparamsSearchSettings,
    IndexSettings,
    ReportSettings,
    RunSettings,
    ServeSettings,
    TopSettings,
    TowerSettings,
    TrainSettings,
    TuneSettings,
    check_bounds,
)
from twotower_cli.data.preprocess import DatasetSettings, SplitSettings
from twotower_cli.data.protocol import ProtocolSettings
from twotower_cli.samplers.settings import SAMPLERS


@dataclass
class ModelSchema(TowerSettings):
    """conf/model/*.yaml: a tower is a `_target_` of models.TOWERS plus its settings."""

    _target_: str = "twotower_cli.models.dssm.DSSM"


@dataclass
class SENetSchema(ModelSchema):
    _target_: str = "twotower_cli.models.senet.SENetTower"
    reduction: int = 2


@dataclass
class ParallelSchema(ModelSchema):
    _target_: str = "twotower_cli.models.parallel.ParallelTower"
    channels: list[str] = field(default_factory=lambda: ["dnn", "fm", "dcn"])
    cross_layers: int = 2


@dataclass
class MultiTaskSchema(ModelSchema):
    _target_: str = "twotower_cli.models.multitask.MultiTaskTower"
    tasks: Any = None
    weighting: str = "fixed"
    task_weights: Any = None
    fusion_weights: Any = None


def sweeps(overrides: list[str]) -> tuple[set[str], set[str]]:
    """The keys a command line sweeps (`a=1,2`, `a=range(1,3)`, `a=choice(x,y)`: a sweep as
    Hydra's own parser reads it; `a=[1,2]` is a list) and the keys it fixes; what is no override
    is Hydra's to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, swept, fixed = OverridesParser.create(), set(), set()
    for line in overrides:
        try:
            (o,) = parser.parse_overrides([line])
        except HydraException:
            continue
        (swept if o.is_sweep_override() else fixed).add(o.key_or_group)
    return swept, fixed


def name_by_sweep(fixed: set[str]) -> str:
    """The Hydra override that leaves the command line's fixed keys out of each job's
    `hydra.job.override_dirname`: what is left names the job (`run_name`)."""
    keys = ",".join(f"'{k}'" for k in sorted(fixed))  # group names and dotted keys
    return f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"


def run_name(model: str) -> str:
    """`paths.run`: the model choice; in a sweep (`-m`) also the job's values of the swept
    keys, so no job overwrites another's run dir (`dssm-model.temperature=0.1,seed=1`). The
    swept keys are Hydra's: the job's overrides (`hydra.job.override_dirname`), the command
    line's or a config file's (`hydra.sweeper.params`), less those the command line fixes
    (`name_by_sweep`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not hc.job.override_dirname:
        return model
    return f"{model}-{hc.job.override_dirname}".replace("/", "_")


def data_name(dataset: str, protocol: str | None) -> str:
    """The data dir's name: the dataset choice, `-<protocol>` unless the default protocol."""
    return dataset if protocol in (None, "default") else f"{dataset}-{protocol}"


def sample_name(sampler: str, fit_on: str) -> str:
    """The sample dir's name: the sampler choice, `+valid` when it learns from train+valid."""
    return sampler if fit_on == "train" else f"{sampler}+valid"


def register() -> None:
    """Put the schemas where the YAML files' defaults lists find them (`/schema/<group>`), and
    the `run_name` and `sample_name` resolvers of conf/paths/default.yaml."""
    for name, fn in (("run_name", run_name), ("sample_name", sample_name),
                     ("data_name", data_name)):  # fmt: skip
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    cs = ConfigStore.instance()
    for name, node in (("dssm", ModelSchema), ("senet", SENetSchema),
                       ("parallel", ParallelSchema), ("multitask", MultiTaskSchema)):  # fmt: skip
        cs.store(group="schema/model", name=name, node=node)
    for group, schemas in PER_CHOICE.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    for group, node in SETTINGS.items():
        if group in SCHEMAS:
            cs.store(group=f"schema/{group}", name="default", node=node)


# group -> its settings dataclass ("": the top-level keys): `check` enforces each field's bounds,
# and a key that is no field (`+train.foo=1`) is refused; those of SCHEMAS are also the YAML's
# types (ConfigStore). No schema for the top level (a structured root would have to declare
# every group, and Hydra would word `seed=abc` its own way) nor for `dataset` (a schema fills
# the keys a data set's YAML leaves out, changing every preprocess output's recorded config)
SETTINGS = {"": TopSettings, "run": RunSettings, "model": TowerSettings, "train": TrainSettings,
            "eval": EvalSettings, "index": IndexSettings, "exposures": ExposureSettings,
            "tune": TuneSettings, "export": ExportSettings, "report": ReportSettings,
            "serve": ServeSettings, "dataset": DatasetSettings, "dataset.split": SplitSettings,
            "dataset.protocol": ProtocolSettings, "paths": PathsSettings,
            "hparams_search": HparamsSearchSettings}  # fmt: skip
SCHEMAS = ("run", "train", "eval", "index", "exposures", "tune", "export", "report", "serve",
           "paths", "hparams_search")  # fmt: skip
# groups with a schema per option (conf/<group>/<name>.yaml -> /schema/<group>/<name>); `check`
# takes the one whose `_target_` the node names (a sampler or tracker of one's own: none)
PER_CHOICE = {"sampler": SAMPLERS, "tracking": TRACKERS}
SETTINGS.update({group: {node._target_: node for node in schemas.values()}
                 for group, schemas in PER_CHOICE.items()})  # fmt: skip
# groups only their own stage reads: another stage does not refuse their values
OWN_STAGE = ("tune", "export", "report", "serve")


def check(cfg: DictConfig) -> None:
    """The bounds of every bounded group and of the top-level keys; ConfigError on the first
    value outside them."""
    for key, settings in SETTINGS.items():
        node = OmegaConf.select(cfg, key) if key else cfg
        if node is None or key in OWN_STAGE and cfg.get("stage") != key:
            continue
        settings = _of_target(settings, node)
        if settings is None or not any(f.metadata for f in fields(settings)):
            continue  # nothing to bound (nor to resolve: paths need Hydra's state)
        check_bounds(settings(**_values(node, settings.__dataclass_fields__)), key)
    _check_known(cfg)
    _check_device(OmegaConf.select(cfg, "train.device") or "cpu")
    _check_targets(OmegaConf.to_container(cfg, resolve=False), "")
    _check_load_keys(cfg)


def _of_target(settings, node: DictConfig):
    """The settings dataclass of a node: `settings`, or the one its `_target_` picks."""
    if not isinstance(settings, dict):
        return settings
    return settings.get(node.get("_target_")) if OmegaConf.is_dict(node) else None


def _values(node: DictConfig, names) -> dict:
    """The node's values of these fields, resolved (the root's other keys are left alone)."""
    values = {}
    for name in names:
        if name in node:
            value = node[name]
            values[name] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(
                value) else value  # fmt: skip
    return values


# an unknown key of a settings group (`+train.foo=1`) is refused before it reaches a stage (or,
# under dataset, every later stage's lineage check); the model's variants add keys of their own
CLOSED = {key: settings for key, settings in SETTINGS.items() if key not in ("", "model")}


def _check_known(cfg: DictConfig) -> None:
    for key, settings in CLOSED.items():
        node = OmegaConf.select(cfg, key)
        settings = _of_target(settings, node)
        if settings is None or not OmegaConf.is_dict(node):
            continue
        names = tuple(settings.__dataclass_fields__)
        unknown = sorted(set(node.keys()) - set(names))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a {key} setting; known: "
                              f"{', '.join(sorted(names))}")  # fmt: skip


def _check_load_keys(cfg: DictConfig) -> None:
    """dataset.load's keys are its loader's arguments: one it does not take is refused (the
    loaders take `**_`, so it would be ignored, yet enter every later stage's lineage check)."""
    load = OmegaConf.select(cfg, "dataset.load")
    target = load.get("_target_") if OmegaConf.is_dict(load) else None
    if not isinstance(target, str):
        return
    module, _, name = target.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # Hydra names a target it cannot find when it instantiates it
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(load.keys()) - named - {"_target_", "_partial_"})
    if unknown:
        raise ConfigError(f"dataset.load.{unknown[0]}: not an argument of {target}; known: "
                          f"{', '.join(sorted(named))}")  # fmt: skip


# modules that moved when the package was split by role (issue 24): a `_target_` a user wrote
# against the old flat layout is named with its new path instead of failing deep in Hydra
MOVED = {
    "twotower_cli.tracking": "twotower_cli.artifacts.tracking",
    "twotower_cli.losses": "twotower_cli.training.losses",
    "twotower_cli.optim": "twotower_cli.training.optim",
    "twotower_cli.baselines": "twotower_cli.retrieval.baselines",
    "twotower_cli.data.news_sim": "twotower_cli.tools.news_sim",
}


def _check_targets(node: Any, where: str) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED.items():
                if target.startswith(old + "."):
                    moved = new + target[len(old) :]
                    raise ConfigError(f"{where}_target_: {target} has moved to {moved}")
        for key, value in node.items():
            _check_targets(value, f"{where}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{where}{i}.")


def _check_device(device: str) -> None:
    """train.device: cpu, auto (CUDA when present), or a CUDA / MPS device this machine has."""
    if device in ("cpu", "auto"):
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"train.device: {device!r} is not a device ({err})") from None
    available = {
        "cuda": torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(dev.type, False)
    if not available:
        raise ConfigError(f"train.device: {device!r} is not available on this machine")


def threads(cfg: DictConfig) -> int:
    return cfg.get("threads") or os.cpu_count() or 1


# dataset.load keys that hold file paths (data/csv_data.py)
PATH_KEYS = ("interactions", "users", "items")


def dataset_paths(cfg: DictConfig) -> dict[str, str]:
    """The relative file paths that a dataset YAML of the user's (`--config-dir DIR`,
    DIR/dataset/NAME.yaml) writes itself, resolved against that YAML's folder; the packaged
    YAMLs' paths and values given on the command line stay relative to the working directory.
    Passed to the loader over dataset.load."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    runtime = HydraConfig.get().runtime
    name = runtime.choices.get("dataset")
    own = None
    for source in runtime.config_sources:
        if source.schema != "file" or source.provider in ("main", "hydra"):
            continue  # twotower's own conf/ (and Hydra's)
        candidate = Path(source.path) / "dataset" / f"{name}.yaml"
        if candidate.is_file():
            own = candidate
            break
    if own is None:
        return {}
    written = OmegaConf.load(own).get("load") or {}
    load = cfg.dataset.get("load") or {}
    out = {}
    for key in PATH_KEYS:
        value = load.get(key)
        if isinstance(value, str) and written.get(key) == value and not Path(value).is_absolute():
            out[key] = str(own.parent / value)
    return out
