"""Train's per-epoch state (`train.resume=auto`; `twotower train`, any `train.nproc`): one
checkpoint that every rank agrees on, so a run killed at any point, on one rank or all of them,
continues after its last finished epoch and ends where an uninterrupted run ends.

One file, `.resume/state.pt`, written by rank 0 alone after each epoch (aside, then renamed):
what data-parallel ranks hold after an epoch is the same on every rank (the weights and the
optimisers' moments, after the same averaged gradients; the shuffling generator; the sampler's
state, fed the global batch; the history), except each rank's torch generator (dropout: seed +
rank), which is gathered from every rank into the file. A kill leaves the previous epoch's file
or this one's, never two ranks at different epochs. On start every rank reads the file and the
ranks compare what they read (one all_reduce): the same epoch everywhere resumes, anything else
(a rank that cannot read it, e.g. a train dir on disks the nodes do not share, or another world
size) starts over on every rank with one line. No Hydra here.

The kills of the tests that check all this are placed by `TWOTOWER_KILL_AT` (hooks.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from twotower_cli.core.layout import FILES
from twotower_cli.training.distributed import Group, _device
from twotower_cli.training.hooks import kill_point

STATE = FILES.resume_state


@dataclass
class Resume:
    """Where `train` keeps the last finished epoch's state and the fingerprint of what it
    trains (config and inputs): a state with another fingerprint is not resumed."""

    dir: Path
    fingerprint: str

    @property
    def path(self) -> Path:
        return self.dir / STATE

    def load(self, group: Group) -> dict | None:
        """The saved state, the same on every rank, or None on every rank (collective)."""
        state, why = self._read(group)
        epochs = len(state["history"]) if state is not None else -1
        lo, hi = _min_max(epochs, group)
        if lo == hi:
            if why and group.is_main:
                print(f"train: {why}; starting over", flush=True)
            return state
        if group.is_main:
            print(f"train: not every rank can read {self.path} (epoch {hi} on some ranks, "
                  f"{lo if lo >= 0 else 'none'} on others: a train dir on disks the nodes do "
                  "not share?); starting over", flush=True)  # fmt: skip
        return None

    def _read(self, group: Group) -> tuple[dict | None, str]:
        """This rank's reading of the file: (state, "") or (None, why not; "" when absent)."""
        path = self.path
        if not path.exists():
            return None, ""
        try:
            state = torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001 -- a broken state is started over, not fatal
            return None, f"ignoring {path} ({type(err).__name__})"
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None, f"{path} was made with other settings or inputs"
        if state.get("world_size") != group.world_size:
            return None, (f"{path} was saved by {state.get('world_size')} ranks, this run has "
                          f"{group.world_size}")  # fmt: skip
        return state, ""

    def save(self, group: Group, epoch: int, state: dict) -> None:
        """Every rank's generator gathered (collective); rank 0 writes the state aside, then
        renames it: a kill mid-write leaves the previous epoch's file."""
        rngs = _all_rng_states(group)
        if group.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            state = {**state, "rngs": rngs, "world_size": group.world_size}
            try:
                torch.save({**state, "fingerprint": self.fingerprint}, tmp)
                kill_point("saving", epoch, group.rank)
                os.replace(tmp, self.path)
            finally:  # a full disk (or a kill signal turned exception) leaves no half file
                tmp.unlink(missing_ok=True)
            for dead in self.dir.glob(f"{STATE}.tmp*"):  # dead writers' (one writer at a time)
                dead.unlink(missing_ok=True)
        kill_point("saved", epoch, group.rank)


def snapshot(model, opts, gen, batch_fn, best, best_state, history, waited, stopped) -> dict:
    """What `restore` needs to continue after this epoch (this rank's generator: `save`)."""
    return {
        "model": model.state_dict(), "opts": [o.state_dict() for o in opts], "best": best,
        "best_state": best_state, "history": history, "waited": waited, "stopped": stopped,
        "gen": gen.get_state(),
        "batch_fn": batch_fn.state_dict() if hasattr(batch_fn, "state_dict") else None,
    }  # fmt: skip


def restore(state: dict, model, opts, gen, batch_fn, rank: int) -> tuple:
    """A saved state put back: (best, best_state, history, waited, stopped)."""
    model.load_state_dict(state["model"])
    for opt, s in zip(opts, state["opts"], strict=True):
        opt.load_state_dict(s)
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rngs"][rank])
    if batch_fn is not None and state["batch_fn"] is not None:
        batch_fn.load_state_dict(state["batch_fn"])
    return state["best"], state["best_state"], state["history"], state["waited"], state["stopped"]


def _min_max(value: int, group: Group) -> tuple[int, int]:
    if not group.active:
        return value, value
    t = torch.tensor([value, -value], dtype=torch.int64, device=_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return -int(t[1]), int(t[0])


def _all_rng_states(group: Group) -> list[torch.Tensor]:
    """Every rank's torch (CPU) generator state, in rank order (its size is fixed)."""
    mine = torch.get_rng_state()
    if not group.active:
        return [mine]
    out = [torch.empty_like(mine) for _ in range(group.world_size)]
    dist.all_gather(out, mine)
    return out
