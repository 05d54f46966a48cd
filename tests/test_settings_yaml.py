"""Each settings dataclass's defaults are the values its conf/ YAML shows the user (issue 24):
a library caller who builds `TrainSettings()` gets what `twotower train` runs with, and a key
written in the YAML is a field of its dataclass."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.core.settings import (
    EvalSettings,
    ExposureSettings,
    IndexSettings,
    TowerSettings,
    TrainSettings,
)
from twotower_cli.data.preprocess import SplitSettings
from twotower_cli.pipeline.config import MultiTaskSchema, ParallelSchema, SENetSchema
from twotower_cli.serve.settings import ServeSettings

# (dataclass, YAML file under conf/, the node in it; "" = the whole file)
PAIRS = [
    (TowerSettings, "model/_tower.yaml", ""),
    (SENetSchema, "model/senet.yaml", ""),
    (ParallelSchema, "model/parallel.yaml", ""),
    (MultiTaskSchema, "model/multitask.yaml", ""),
    (TrainSettings, "train/default.yaml", ""),
    (EvalSettings, "eval/default.yaml", ""),
    (IndexSettings, "index/default.yaml", ""),
    (ExposureSettings, "config.yaml", "exposures"),
    (ServeSettings, "serve/default.yaml", ""),
    (SplitSettings, "dataset/ml100k.yaml", "split"),
]


def default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def written(path: str, node: str) -> dict:
    """The YAML's own values (no defaults list), interpolations unresolved."""
    cfg = OmegaConf.load(Path(CONFIG_DIR) / path)
    values = OmegaConf.to_container(cfg[node] if node else cfg, resolve=False)
    values.pop("defaults", None)
    return values


@pytest.mark.parametrize(("settings", "path", "node"), PAIRS, ids=[p[1] for p in PAIRS])
def test_dataclass_defaults_are_the_yaml_values(settings, path, node):
    values = written(path, node)
    own = {f.name: f for f in fields(settings)}
    assert set(values) <= set(own), f"{path}: keys that are no field of {settings.__name__}"
    drifted = {}
    for key, value in values.items():
        if isinstance(value, str) and "${" in value or isinstance(value, dict):
            continue  # an interpolation, or a `_target_` node the stage instantiates
        mine = default(own[key])
        mine = list(mine) if isinstance(mine, tuple) else mine
        if mine != value or type(mine) is bool and type(value) is not bool:
            drifted[key] = (mine, value)
    assert drifted == {}, f"{settings.__name__} default != {path}: {drifted}"
