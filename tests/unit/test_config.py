"""Every option of every config group composes and builds what reads it; bad values are one
line naming the key, at composition (types) or before the stage runs (bounds)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import options, twotower
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower_cli.artifacts import checkpoint
from twotower_cli.cli import CONFIG_DIR
from twotower_cli.core.errors import ConfigError
from twotower_cli.core.layout import STAGE_DIRS, Layout
from twotower_cli.core.settings import EvalSettings, IndexSettings, TrainSettings
from twotower_cli.data.protocol import settings as protocol_settings
from twotower_cli.pipeline import config
from twotower_cli.pipeline.study import search_space
from twotower_cli.report.diagnostics import BucketSettings

GROUPS = ["dataset", "protocol", "sampler", "model", "train", "index", "eval", "serve", "export",
          "paths", "tracking", "report", "tune", "hparams_search"]  # fmt: skip
# every metric ranking_metrics computes (a protocol's table prints some of them)
RANKED_METRICS = ("recall", "precision", "ndcg", "hit_rate", "mrr", "coverage")
# `_name.yaml` files are shared bases of a group's options (conf/model/_tower.yaml), not options
OPTIONS = [(group, option) for group in GROUPS for option in options(group)]
SCHEMA = {
    "user": [{"name": "user", "kind": "categorical", "vocab_size": 5, "max_len": 1}],
    "item": [
        {"name": "item", "kind": "categorical", "vocab_size": 7, "max_len": 1},
        {"name": "tags", "kind": "multihot", "vocab_size": 4, "max_len": 3},
    ],
}


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # `${hydra:...}` paths resolve as in a run
    return cfg


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(group: str, option: str):
    cfg = composed(f"{group}={option}")
    if group == "protocol":  # a global overlay: dataset.protocol, eval.ks, train.early_stop_k
        config.check(cfg)
        proto = protocol_settings(cfg.dataset)
        assert proto.name == option and set(proto.metrics) <= set(RANKED_METRICS)
        suffix = "" if option == "default" else f"-{option}"
        assert cfg.paths.data_dir == f"outputs/ml100k{suffix}"
        return
    node = OmegaConf.to_container(cfg[group], resolve=True)
    config.check(cfg)
    if group == "model":
        model = checkpoint.build(*checkpoint.model_args(node), SCHEMA)
        assert model.logit_scale > 0 and model.tower.embed_dim == node["embed_dim"]
    elif group == "sampler":
        sampler = instantiate(cfg.sampler)
        assert hasattr(sampler, "fit") and hasattr(sampler, "batch_fn")
    elif group == "dataset":
        load = instantiate(cfg.dataset.load, _partial_=True)
        assert callable(load) and {"label", "split"} <= set(node)
    elif group == "serve":
        from twotower_cli.serve import ServeSettings

        assert ServeSettings(**node).port == node["port"]
    elif group == "export":
        assert isinstance(node["dynamo"], bool)
    elif group == "tracking":  # building a tracker touches nothing; start() opens the store
        tracker = instantiate(cfg.tracking)
        assert type(tracker).__name__ == {"none": "NullTracker", "mlflow": "MlflowTracker"}[option]
    elif group == "report":
        keys = ("k", "head_share", "torso_share", "user_quantiles", "random_per_positive")
        BucketSettings(*(node[k] for k in keys)).check()
    elif group == "hparams_search":  # every search space parses into Optuna distributions
        params = OmegaConf.to_container(cfg.hparams_search.params, resolve=True)
        assert set(search_space(params, option)) == set(params)
    elif group == "tune":
        assert node["trials"] >= 1 and node["seeds"]
    elif group == "paths":
        layout = Layout.of(cfg.paths)
        dirs = {getattr(layout, s) for s in STAGE_DIRS}
        assert len(dirs) == len(STAGE_DIRS) and layout.model.parent == layout.train
    else:
        settings = {"train": TrainSettings, "index": IndexSettings, "eval": EvalSettings}[group]
        built = settings(**node)
        assert {f.name for f in fields(built)} == set(node)


def test_every_group_has_an_option():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=fast", "train.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.epochs=-5", "train.epochs must be >= 1, got -5"),
        ("train.lr=0", "train.lr must be > 0.0, got 0.0"),
        ("model.embed_dim=0", "model.embed_dim must be >= 1, got 0"),
        ("model.dropout=1.0", "model.dropout must be < 1.0, got 1.0"),
        ("model.similarity=euclid", "model.similarity: 'euclid' not in ('cosine', 'dot')"),
        ("dataset.split.test_fraction=1.5", "dataset.split.test_fraction must be < 1.0, got 1.5"),
        (
            "dataset.engine_memory=lots",
            "dataset.engine_memory: 'lots' is not a memory size like 1GB or 512MB",
        ),
        ("eval.ks=[10,0]", "eval.ks: need a non-empty list of values >= 1, got [10, 0]"),
        ("threads=0", "threads must be null (every core) or an integer >= 1, got 0"),
        ("threads=true", "threads must be null (every core) or an integer >= 1, got True"),
        (
            "loss=hinge",
            "loss: 'hinge' not in ('auto', 'bce', 'sampled_softmax', 'inbatch_softmax')",
        ),
        ("run.force=maybe", "run.force: Value 'maybe' is not a valid bool (type str)"),
        ("+run.foo=1", "run.foo: not a run setting; known: force"),
        ("train.device=cuda:7", "train.device: 'cuda:7' is not available on this machine"),
        ("train.no_such_key=1", "train.no_such_key: Key 'no_such_key' not in 'TrainSettings'"),
        # a _target_ written against the flat layout before issue 24 names its new path
        (
            "tracking._target_=twotower_cli.tracking.MlflowTracker",
            "tracking._target_: twotower_cli.tracking.MlflowTracker has moved to "
            "twotower_cli.artifacts.tracking.MlflowTracker",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(override, message, tmp_path, capsys):
    assert twotower("train", override, f"paths.out={tmp_path}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"twotower train: error: {message}"]
    assert not any(tmp_path.iterdir())  # nothing was written


def test_check_passes_the_defaults_and_raises_config_error():
    config.check(composed())
    with pytest.raises(ConfigError, match="loss"):
        config.check(composed("loss=hinge"))


def test_the_optimiser_is_a_partial_target_node():
    from twotower_cli.training.trainer import optimizers

    cfg = composed("train.optimizer._target_=torch.optim.SGD", "train.lr=0.5",
                   "~train.optimizer.fused")  # fmt: skip
    settings = TrainSettings(**{**cfg.train, "optimizer": instantiate(cfg.train.optimizer)})
    (opt,) = optimizers(torch.nn.Linear(2, 1), settings)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.5
    default = composed().train
    (adam,) = optimizers(torch.nn.Linear(2, 1), TrainSettings(
        **{**default, "optimizer": instantiate(default.optimizer)}))  # fmt: skip
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == default.lr


def test_a_data_set_carries_its_own_training_defaults():
    # conf/tuned/<dataset>.yaml is merged after the groups: news and ML-100K train with their
    # own settings, other data sets keep the groups' values, and the command line still wins
    news, ml, csv = composed("dataset=news"), composed("dataset=ml100k"), composed("dataset=csv")
    assert (news.model.temperature, news.train.patience) == (0.2, 20)
    assert (ml.model.temperature, ml.model.history, ml.train.patience) == (0.124, True, 4)
    # every other data set: ML-100K's pick is the groups' default (model/_tower.yaml)
    assert (csv.model.temperature, csv.model.history, csv.train.patience) == (0.124, True, 4)
    assert (news.model.history, news.train.lr, composed("dataset=csv").sampler.n_uniform) == (
        False, 0.003, 1024)  # fmt: skip
    assert composed("dataset=news", "train.patience=3").train.patience == 3
    # conf/tuned/sampler/<dataset>_<sampler>.yaml: only with that sampler (ML-100K's mixed
    # negatives ride on the in-batch sampler; another sampler takes no n_uniform)
    assert ml.sampler.n_uniform == 1024 and news.sampler.n_uniform == 0
    assert "n_uniform" not in composed("dataset=ml100k", "sampler=random").sampler
    for path in (Path(CONFIG_DIR) / "tuned" / "sampler").glob("*.yaml"):
        dataset, sampler = path.stem.rsplit("_", 1)
        assert (Path(CONFIG_DIR) / "dataset" / f"{dataset}.yaml").exists(), path.name
        assert (Path(CONFIG_DIR) / "sampler" / f"{sampler}.yaml").exists(), path.name
    for path in (Path(CONFIG_DIR) / "tuned").glob("*.yaml"):
        assert (Path(CONFIG_DIR) / "dataset" / path.name).exists(), path.name


def test_every_config_file_ships_in_the_wheel():
    # setuptools' package-data globs do not recurse: a YAML one level deeper than they reach
    # (conf/tuned/sampler/) would be missing from an installed wheel, and `optional` groups
    # would then change a run silently
    import tomllib

    pyproject = Path(CONFIG_DIR).parents[1] / "pyproject.toml"
    setup = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    package = Path(CONFIG_DIR).parent
    shipped = {p for g in setup["package-data"]["twotower_cli"] for p in package.glob(g)}
    assert set(Path(CONFIG_DIR).rglob("*.yaml")) <= shipped
