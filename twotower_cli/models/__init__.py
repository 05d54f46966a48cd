"""Tower variants, one file each, built from the shared blocks in `blocks.py`.

`TOWERS` is the fixed registry of twotower's own tower classes: a config names one by its
`_target_`, a checkpoint by its key, and nothing else is ever built (checkpoint.py).
`inputs.py` turns the data layer's feature arrays into the tensors the towers gather from."""

from twotower_cli.core.errors import ConfigError
from twotower_cli.models.base import TwoTower
from twotower_cli.models.dssm import DSSM
from twotower_cli.models.multitask import MultiTaskTower
from twotower_cli.models.parallel import ParallelTower
from twotower_cli.models.senet import SENetTower

TOWERS: dict[str, type[TwoTower]] = {
    "dssm": DSSM,
    "senet": SENetTower,
    "parallel": ParallelTower,
    "multitask": MultiTaskTower,
}


def tower_key(target: str) -> str:
    """The registry key of a config's `_target_` (the class's dotted path)."""
    for key, cls in TOWERS.items():
        if target == f"{cls.__module__}.{cls.__qualname__}":
            return key
    known = sorted(f"{c.__module__}.{c.__qualname__}" for c in TOWERS.values())
    raise ConfigError(f"model._target_: {target!r} is not a twotower tower; known: {known}")
