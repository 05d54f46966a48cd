"""Test and measurement hooks of the training loop, both off unless an environment variable
asks (`twotower train`, any `train.nproc`).

`TWOTOWER_KILL_AT=<point>@<epoch>:<rank>` kills that rank with SIGKILL at a point of an epoch
(1-based): `step`, halfway through its steps; `saving`, rank 0's resume state written aside,
not yet renamed (resume.py); `saved`, the epoch's state saved. Only on a group's first start
(not after a torchrun restart, whose workers get TORCHELASTIC_RESTART_COUNT > 0): how the
tests place a kill without timing one.

`TWOTOWER_PROFILE=<dir>` profiles steps PROFILE_STEPS of the first epoch with torch.profiler
and writes `<dir>/rank<r>.json`: each op's self time per step (ms, as the profiler times it
on its thread, waits included) and the steps' wall ms (the bench's dist section).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator, Sized
from pathlib import Path

from twotower_cli.core.layout import FILES

KILL_ENV = "TWOTOWER_KILL_AT"
PROFILE_ENV = "TWOTOWER_PROFILE"
POINTS = ("step", "saving", "saved")
PROFILE_STEPS = (10, 40)  # after a warm-up; 30 steps


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
    `step` kill point halfway and, under TWOTOWER_PROFILE, the first epoch's profile."""
    half, out = len(bounds) // 2, os.environ.get(PROFILE_ENV)
    profiling = out is not None and epoch == 1 and len(bounds) >= PROFILE_STEPS[1]
    for i, b in enumerate(bounds):
        if i == half:
            kill_point("step", epoch, rank)
        if profiling and i == PROFILE_STEPS[0]:
            prof, start = _profiler(), time.perf_counter()
        if profiling and i == PROFILE_STEPS[1]:
            _write_profile(prof, time.perf_counter() - start, Path(out), rank)
        yield b


def _profiler():
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    prof.__enter__()
    return prof


def _write_profile(prof, seconds: float, out: Path, rank: int) -> None:
    prof.__exit__(None, None, None)
    n = PROFILE_STEPS[1] - PROFILE_STEPS[0]
    ops = {e.key: e.self_cpu_time_total / 1e3 / n for e in prof.key_averages()}
    out.mkdir(parents=True, exist_ok=True)
    record = {"steps": n, "step_ms": seconds * 1e3 / n,
              "self_cpu_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}  # fmt: skip
    (out / FILES.profile(rank)).write_text(json.dumps(record, indent=1))
