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
    ExportSettings,
    ExposureSettings,
    IndexSettings,
    ReportSettings,
    ServeSettings,
    TowerSettings,
    TrainSettings,
    TuneSettings,
)
from twotower_cli.data.preprocess import SplitSettings
from twotower_cli.pipeline.config import MultiTaskSchema, ParallelSchema, SENetSchema

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
    (TuneSettings, "tune/default.yaml", ""),
    (ExportSettings, "export/default.yaml", ""),
    (ReportSettings, "report/default.yaml", ""),
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


@pytest.mark.parametrize(
    ("override", "message"),
    [("tune.minutes=0", "tune.minutes: 0 is not null or a number of minutes > 0"),
     ("report.k=0", "report.k: 0 must be at least 1"),
     ("report.random_per_positive=0", "report.random_per_positive: 0 < 1"),
     ("serve.port=0", "serve.port: must be an integer in 1-65535, got 0"),
     ("serve.timeout_read=-1", "serve.timeout_read: must be > 0 seconds, got -1"),
     ("export.dynamo=maybe", "export.dynamo: Value 'maybe' is not a valid bool (type str)"),
     ("+tune.foo=1", "tune.foo: not a tune setting; known: confirm_seeds, confirm_top")],
)  # fmt: skip
def test_a_stage_group_is_checked_by_its_stage_only(override, message):
    # the same check as train's (pipeline/config.py): its own stage refuses a bad value in one
    # line naming the key, and another stage, which does not read the group, lets it be
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    from twotower_cli.cli import _one_line
    from twotower_cli.core.errors import ConfigError
    from twotower_cli.pipeline import config

    stage = override.lstrip("+").split(".")[0]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose("config", [f"stage={stage}", override], return_hydra_config=True)
        except HydraException as err:
            assert _one_line(err) == message
            return
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(ConfigError) as err:
            config.check(cfg)
        assert str(err.value).startswith(message)
        if not override.startswith("+"):
            config.check(compose("config", ["stage=preprocess", override]))
