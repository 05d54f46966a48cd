"""The benchmark's one timer (`make bench`, every section): the sides of a comparison run in the
same process, alternating A B, then B A, ..., so that machine load hits them alike, and are
compared by their medians."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Rounds:
    """What `alternate` measured: per side, each round's seconds and what its call returned."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, list] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return median(self.seconds[side])

    def rate(self, side: str, n: float) -> float:
        """n things (queries, samples, flops) over the side's median seconds."""
        return n / self.median(side)


def median(values) -> float:
    return float(np.median(values))


def turn(sides: list[str], r: int) -> list[str]:
    """The order of round r: as given on even rounds, reversed on odd ones."""
    return list(sides) if r % 2 == 0 else list(reversed(sides))


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reading covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(
    rounds: int,
    sides: dict[str, Callable[[int], object]],
    after: Callable[[str, int, Rounds], None] | None = None,
    round_end: Callable[[int, Rounds], None] | None = None,
    device: str = "cpu",
) -> Rounds:
    """Call every side once a round for `rounds` rounds in `turn` order, each call given the
    round and timed alone (the device synchronised before and after). `after(side, round,
    so_far)` runs right after each call and `round_end(round, so_far)` after each round, both
    untimed, `so_far` the Rounds measured until then. One side repeats alone."""
    out = Rounds({s: [] for s in sides}, {s: [] for s in sides})
    for r in range(rounds):
        for side in turn(list(sides), r):
            sync(device)
            start = time.perf_counter()
            result = sides[side](r)
            sync(device)
            out.seconds[side].append(time.perf_counter() - start)
            out.results[side].append(result)
            if after is not None:
                after(side, r, out)
        if round_end is not None:
            round_end(r, out)
    return out
