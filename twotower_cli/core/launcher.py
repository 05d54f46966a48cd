"""Whether this process is a worker of torchrun (or the elastic launcher), read from the
environment alone, so that a stage that never trains (`preprocess`) can check it without
loading torch (`training/distributed.py` uses the same)."""

from __future__ import annotations

import os

from twotower_cli.core.errors import TwoTowerError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def under_launcher() -> bool:
    """True in a worker started by torchrun or the elastic launcher (its variables are set)."""
    return all(k in os.environ for k in ENV)


def check_stage(stage: str) -> None:
    """Under a launcher with several ranks only `train` runs: any other stage would run once
    per rank, every copy writing the same outputs."""
    if under_launcher() and int(os.environ["WORLD_SIZE"]) > 1 and stage != "train":
        raise TwoTowerError(
            f"`twotower {stage}` under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): only "
            "train runs distributed; run the other stages in one process"
        )
