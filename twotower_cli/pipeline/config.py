"""The config schema (`twotower <stage>` composes against it): the settings dataclasses are
registered in Hydra's ConfigStore, so a value of the wrong type (`train.lr=fast`) fails at
composition, and `check` enforces their bounds (`train.batch_size=0`) before a stage runs. Both
raise one ConfigError naming the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts.store import FIT_ON
from twotower_cli.core.errors import ConfigError
from twotower_cli.core.settings import (
    EvalSettings,
    ExposureSettings,
    IndexSettings,
    TowerSettings,
    TrainSettings,
    check_bounds,
)
from twotower_cli.data.engine import check_memory
from twotower_cli.data.preprocess import SplitSettings


@dataclass
class ModelSchema(TowerSettings):
    """conf/model/*.yaml: a tower is a `_target_` of models.TOWERS plus its settings."""

    _target_: str = "twotower_cli.models.dssm.DSSM"


@dataclass
class SENetSchema(ModelSchema):
    reduction: int = 2


@dataclass
class ParallelSchema(ModelSchema):
    channels: list[str] = field(default_factory=lambda: ["dnn", "fm", "dcn"])
    cross_layers: int = 2


@dataclass
class MultiTaskSchema(ModelSchema):
    tasks: Any = None
    weighting: str = "fixed"
    task_weights: Any = None
    fusion_weights: Any = None


# the keys a `-m` sweep varies (cli.main sets them from the command line)
SWEPT: set[str] = set()


def swept_keys(overrides: list[str]) -> set[str]:
    """The keys of sweep overrides: `a=1,2`, `a=range(...)`, `a=choice(...)`, `a=glob(...)`."""
    out = set()
    for o in overrides:
        key, _, value = o.partition("=")
        if "," in value or value.startswith(("range(", "choice(", "glob(", "interval(")):
            out.add(key.lstrip("+~"))
    return out


def run_name(model: str) -> str:
    """`paths.run`: the model choice; in a sweep (`-m`) also the job's values of the swept
    keys, so no job overwrites another's run dir (`dssm-model.temperature=0.1,seed=1`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return model
    mine = sorted(o for o in hc.overrides.task if o.partition("=")[0].lstrip("+~") in SWEPT)
    return f"{model}-{','.join(mine)}".replace("/", "_") if mine else model


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
    cs.store(group="schema/train", name="default", node=TrainSettings)
    cs.store(group="schema/eval", name="default", node=EvalSettings)
    cs.store(group="schema/index", name="default", node=IndexSettings)
    cs.store(group="schema/exposures", name="default", node=ExposureSettings)


# group -> settings dataclass whose field bounds `check` enforces
BOUNDED = {"model": TowerSettings, "train": TrainSettings, "eval": EvalSettings,
           "index": IndexSettings, "exposures": ExposureSettings,
           "dataset.split": SplitSettings}  # fmt: skip
LOSSES = ("auto", "bce", "sampled_softmax", "inbatch_softmax")


def check(cfg: DictConfig) -> None:
    """The bounds of every bounded group and of the top-level keys; ConfigError on the first
    value outside them."""
    for key, settings in BOUNDED.items():
        node = OmegaConf.select(cfg, key)
        if node is None:
            continue
        values = OmegaConf.to_container(node, resolve=True)
        names = {f for f in settings.__dataclass_fields__}
        check_bounds(settings(**{k: v for k, v in values.items() if k in names}), key)
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be null (every core) or an integer >= 1, got {threads!r}")
    memory = OmegaConf.select(cfg, "dataset.engine_memory")
    if memory is not None:
        check_memory(memory)
    if cfg.get("fit_on", "train") not in FIT_ON:
        raise ConfigError(f"fit_on: {cfg.get('fit_on')!r} not in {tuple(FIT_ON)}")
    if cfg.get("loss") not in LOSSES:
        raise ConfigError(f"loss: {cfg.get('loss')!r} not in {LOSSES}")
    if cfg.get("serve") is not None:
        from twotower_cli.serve.settings import ServeSettings

        ServeSettings(**OmegaConf.to_container(cfg.serve, resolve=True))  # checks its bounds
    _check_device(OmegaConf.select(cfg, "train.device") or "cpu")
    _check_targets(OmegaConf.to_container(cfg, resolve=False), "")


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
    """train.device: cpu, or a CUDA / MPS device this machine has."""
    if device == "cpu":
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
