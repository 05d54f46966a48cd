"""Every option of every config group composes, and its `_target_` instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.data.tables import load_schema  # noqa: F401  (import check)
from twotower_cli.stages import _sampler

GROUPS = ["dataset", "sampler", "model", "train", "index", "eval", "paths"]
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


def test_every_group_has_an_option():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_a_data_set_carries_its_own_training_defaults():
    # conf/tuned/news.yaml is merged after the groups: news trains with its own settings,
    # other data sets keep the groups' values, and the command line still wins
    news, ml = _compose("dataset=news"), _compose("dataset=ml100k")
    assert (news.model.temperature, news.train.patience) == (0.2, 20)
    assert (ml.model.temperature, ml.train.patience) == (0.05, 4)
    assert _compose("dataset=news", "train.patience=3").train.patience == 3
    for path in (Path(CONFIG_DIR) / "tuned").glob("*.yaml"):
        assert (Path(CONFIG_DIR) / "dataset" / path.name).exists(), path.name
