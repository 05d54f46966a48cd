"""Every option of every config group composes, and its `_target_` instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.data.tables import load_schema  # noqa: F401  (import check)
from twotower_cli.stages import _sampler
from twotower_cli.tune import search_space

GROUPS = [
    "dataset",
    "sampler",
    "model",
    "train",
    "index",
    "eval",
    "paths",
    "tune",
    "hparams_search",
]
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
]
SCHEMA = {
    "user": [{"name": "user", "kind": "categorical", "vocab_size": 5, "max_len": 1}],
    "item": [
        {"name": "item", "kind": "categorical", "vocab_size": 7, "max_len": 1},
        {"name": "tags", "kind": "multihot", "vocab_size": 4, "max_len": 3},
    ],
}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group: str, option: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # `${hydra:...}` paths resolve as in a run
    node = cfg[group]
    assert node is not None
    if group == "model":
        model = instantiate(node, schema=SCHEMA)
        assert model.logit_scale > 0
    elif group == "sampler":
        assert hasattr(_sampler(cfg)[0], "fit")
    elif group == "dataset":
        assert node.load._target_.startswith("twotower_cli.data.")
        assert {"label", "split"} <= set(node)
    elif group == "hparams_search":  # every search space parses into Optuna distributions
        params = OmegaConf.to_container(node.params, resolve=True)
        assert set(search_space(params, option)) == set(params)


def test_every_group_has_an_option():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
