"""Each settings dataclass's defaults are the values its conf/ YAML shows the user (issue 24):
a library caller who builds `TrainSettings()` gets what `twotower train` runs with, and a key
written in the YAML is a field of its dataclass."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from twotower_cli.cli import CONFIG_DIR
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
)
from twotower_cli.data.preprocess import DatasetSettings, SplitSettings
from twotower_cli.data.protocol import ProtocolSettings
from twotower_cli.pipeline.config import MultiTaskSchema, ParallelSchema, SENetSchema
from twotower_cli.samplers.settings import SAMPLERS

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
    (RunSettings, "config.yaml", "run"),
    (ServeSettings, "serve/default.yaml", ""),
    (TuneSettings, "tune/default.yaml", ""),
    (ExportSettings, "export/default.yaml", ""),
    (ReportSettings, "report/default.yaml", ""),
    (SplitSettings, "dataset/ml100k.yaml", "split"),
    # csv.yaml is the template of a data set of one's own: it writes every shared key
    (DatasetSettings, "dataset/csv.yaml", ""),
    *((settings, f"sampler/{name}.yaml", "") for name, settings in SAMPLERS.items()),
    *((settings, f"tracking/{name}.yaml", "") for name, settings in TRACKERS.items()),
    (PathsSettings, "paths/default.yaml", ""),
    (HparamsSearchSettings, "hparams_search/default.yaml", ""),
]


def default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def written(path: str, node: str) -> dict:
    """The YAML's own values (no defaults list), interpolations unresolved."""
    cfg = OmegaConf.load(Path(CONFIG_DIR) / path)
    values = OmegaConf.to_container(cfg[node] if node else cfg, resolve=False)
    values.pop("defaults", None)
    return values


def test_the_top_level_keys_are_top_settings():
    # conf/config.yaml's own scalars (its other keys are groups: dicts) are TopSettings' fields
    values = {k: v for k, v in written("config.yaml", "").items() if not isinstance(v, dict)}
    own = {f.name: default(f) for f in fields(TopSettings)}
    assert values == own


@pytest.mark.parametrize("path", sorted(p.name for p in (Path(CONFIG_DIR) / "dataset").iterdir()))
def test_every_data_set_writes_dataset_settings_only(path):
    values = written(f"dataset/{path}", "")
    assert set(values) <= {f.name for f in fields(DatasetSettings)}
    assert set(values["split"]) <= {f.name for f in fields(SplitSettings)}


@pytest.mark.parametrize("path", sorted(p.name for p in (Path(CONFIG_DIR) / "protocol").iterdir()))
def test_every_protocol_is_protocol_settings(path):
    # conf/protocol/default.yaml sets nothing: ProtocolSettings() is the default protocol
    values = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "protocol" / path))
    protocol = (values or {}).get("dataset", {}).get("protocol", {})
    assert ProtocolSettings(**protocol).name == path.removesuffix(".yaml")


@pytest.mark.parametrize(("group", "schemas"), [("sampler", SAMPLERS), ("tracking", TRACKERS)])
def test_every_option_has_its_settings(group, schemas):
    # an option of the package without a schema would go unchecked (config._of_target)
    names = {p.stem for p in (Path(CONFIG_DIR) / group).iterdir()}
    assert names == set(schemas)
    for name, settings in schemas.items():
        values = written(f"{group}/{name}.yaml", "")
        assert list(values) == [f.name for f in fields(settings)], name  # all, in order
        assert values["_target_"] == settings._target_


# the data sets with tuned keys (conf/tuned/<dataset>.yaml, tuned/sampler/<dataset>_*.yaml): the
# others compose every sampler from the groups' files alone
TUNED_DIR = Path(CONFIG_DIR) / "tuned"
TUNED = sorted({p.stem for p in TUNED_DIR.glob("*.yaml")}
               | {p.stem.rsplit("_", 1)[0] for p in TUNED_DIR.glob("sampler/*.yaml")})  # fmt: skip


@pytest.mark.parametrize("dataset", TUNED)
def test_every_sampler_composes_with_every_data_set(dataset):
    # a data set's tuned keys (conf/tuned/) give no sampler a key it does not take: the schema
    # refuses one at composition (tuned/news.yaml's `sampler.logq` broke sampler=uniform)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name, settings in SAMPLERS.items():
            cfg = compose("config", [f"dataset={dataset}", f"sampler={name}"])
            assert set(cfg.sampler) == {f.name for f in fields(settings)}


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
    cfg = refused([override], message, stage=override.lstrip("+").split(".")[0])
    if cfg is not None and not override.startswith("+"):
        from hydra import compose, initialize_config_dir

        from twotower_cli.pipeline import config

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            config.check(compose("config", ["stage=preprocess", override]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["sampler.n_uniform=-1"], "sampler.n_uniform must be >= 0, got -1"),
     (["sampler=mixed", "sampler.n_uniform=0"], "sampler.n_uniform must be >= 1, got 0"),
     (["sampler=inbatch", "sampler.logq=approx"],
      "sampler.logq: 'approx' not in ('exact', 'streaming', 'off')"),
     (["sampler=random", "sampler.logq=streaming"],
      "sampler.logq: streaming applies to in-batch samplers only"),
     (["sampler=popularity", "sampler.mode=zipf"],
      "sampler.mode: 'zipf' not in ('power', 'rank')"),
     (["sampler=hard", "sampler.hard_ratio=1.5"], "sampler.hard_ratio must be in [0, 1], got 1.5"),
     (["sampler=hard", "sampler.band=[0,5]"],
      "sampler.band: need a non-empty list of values >= 1, got [0, 5]"),
     (["sampler=uniform", "sampler.n_negatives=0"], "sampler.n_negatives must be >= 1, got 0"),
     (["sampler=full", "sampler.max_items=0"], "sampler.max_items must be >= 1, got 0"),
     (["sampler=random", "sampler.n_neg=many"],
      "sampler.n_neg: Value 'many' of type 'str' could not be converted to Integer"),
     (["sampler=random", "+sampler.alpha=1"],
      "sampler.alpha: not a sampler setting; known: _target_, logq, n_neg, seed")],
)  # fmt: skip
def test_a_bad_sampler_value_is_refused_before_a_stage_runs(overrides, message):
    # the samplers' own words (samplers/*.py), from the config check of every stage
    refused(overrides, message, stage="preprocess")


@pytest.mark.parametrize(
    ("override", "message"),
    [("+paths.foo=1", "paths.foo: not a paths setting; known: data_dir"),
     ("+tracking.foo=1", "tracking.foo: not a tracking setting; known: _target_"),
     ("+hparams_search.foo=1", "hparams_search.foo: not a hparams_search setting; known: params"),
     ("+dataset.foo=1", "dataset.foo: not a dataset setting; known: engine_memory, label")],
)  # fmt: skip
def test_an_unknown_key_of_a_wiring_group_is_refused(override, message):
    refused([override], message, stage="preprocess")


def refused(overrides: list[str], message: str, stage: str):
    """Compose and check `overrides` under `stage`: the one line (Hydra's at composition, or
    config.check's) must start with `message`; the composed config when check refused it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    from twotower_cli.cli import _one_line
    from twotower_cli.core.errors import ConfigError
    from twotower_cli.pipeline import config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose("config", [f"stage={stage}", *overrides], return_hydra_config=True)
        except HydraException as err:
            assert _one_line(err).startswith(message)
            return None
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(ConfigError) as err:
            config.check(cfg)
        assert str(err.value).startswith(message)
        return cfg
