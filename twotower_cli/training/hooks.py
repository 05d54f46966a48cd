"""Test hooks of the training loop, off unless an environment variable asks (`twotower train`,
any `train.nproc`).

`TWOTOWER_KILL_AT=<point>@<epoch>:<rank>` kills that rank with SIGKILL at a point of an epoch
(1-based): `step`, halfway through its steps; `saving`, rank 0's resume state written aside,
not yet renamed (resume.py); `saved`, the epoch's state saved; `publish`, training done, before
rank 0 writes its outputs. Only on a group's first start (not after a torchrun restart, whose
workers get TORCHELASTIC_RESTART_COUNT > 0): how the tests place a kill without timing one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sized

KILL_ENV = "TWOTOWER_KILL_AT"
POINTS = ("step", "saving", "saved", "publish")


def _kill_spec() -> tuple[str, int, int] | None:
    spec = os.environ.get(KILL_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    point, _, rest = spec.partition("@")
    epoch, _, rank = rest.partition(":")
    if point not in POINTS or not epoch.isdigit() or not rank.isdigit():
        raise ValueError(
            f"{KILL_ENV}={spec!r}: expected <point>@<epoch>:<rank>, point in {POINTS}"
        )
    return point, int(epoch), int(rank)


def kill_point(point: str, epoch: int, rank: int) -> None:
    """SIGKILL this process if `TWOTOWER_KILL_AT` names this point, epoch (1-based) and rank."""
    if _kill_spec() == (point, epoch, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def steps(bounds: Sized, epoch: int, rank: int) -> Iterator:
    """`bounds` (a sized iterable, e.g. a progress bar): one item per training step, with the
    `step` kill point halfway."""
    half = len(bounds) // 2
    for i, b in enumerate(bounds):
        if i == half:
            kill_point("step", epoch, rank)
        yield b
