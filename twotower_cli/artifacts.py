"""Stage outputs: written aside and moved into place on success, with a manifest.json last.

A stage that fails leaves nothing behind; a stage's outputs are complete when its manifest exists.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from twotower_cli.errors import TwoTowerError

MANIFEST = "manifest.json"
_stage_start = time.perf_counter()


def mark_stage_start() -> None:
    """Called as a stage begins: the manifest's `seconds` count the whole stage, not the write."""
    global _stage_start
    _stage_start = time.perf_counter()


def require(
    stage_dir: str | Path, command: str, made_with: dict | None = None, ignore: tuple = ()
) -> Path:
    """The directory of an earlier stage, or a one-line error naming the command to run first.

    `made_with` ({section: resolved config}) must match the config that stage ran with: paths
    are keyed by group choices only, so `sampler.kind=mined` would otherwise train on a
    `kind=rule` sample. Keys named `seed` (a sweep over seeds may reuse one sample), `*_dir`
    (where inputs were read from, not what they hold) and the dotted keys in `ignore` are not
    compared.
    """
    stage_dir = Path(stage_dir)
    if not (stage_dir / MANIFEST).exists():
        raise TwoTowerError(f"{stage_dir} has no finished output: run `twotower {command}` first")
    then = read_manifest(stage_dir).get("config", {})
    for section, now in (made_with or {}).items():
        diff = _first_difference(then.get(section), now, section, ignore)
        if diff is not None:
            key, old, new = diff
            raise TwoTowerError(
                f"{stage_dir} was made with {key}={old!r}, not {new!r}: run `twotower {command}`"
                " with these settings first"
            )
    return stage_dir


def _first_difference(then, now, key: str, ignore: tuple = ()) -> tuple | None:
    """(dotted key, old value, new value) of the first difference between two configs."""
    if isinstance(then, dict) and isinstance(now, dict):
        for k in sorted(set(then) | set(now), key=str):
            if k == "seed" or str(k).endswith("_dir") or f"{key}.{k}" in ignore:
                continue
            diff = _first_difference(then.get(k), now.get(k), f"{key}.{k}", ignore)
            if diff is not None:
                return diff
        return None
    return None if then == now else (key, then, now)


def read_manifest(stage_dir: str | Path) -> dict:
    return json.loads((Path(stage_dir) / MANIFEST).read_text())


def read_split(prep_dir: Path, name: str) -> pd.DataFrame:
    """One table `twotower preprocess` wrote: `train`, `valid`, `test`, `tasks_train`, ..."""
    return pd.read_parquet(Path(prep_dir) / f"{name}.parquet")


def seen_rows(prep_dir: Path, prefix: str = "") -> pd.DataFrame:
    """Each user's train + validation rows: what evaluation and serving mask, and what the
    history feature reads at evaluation and serving time."""
    return pd.concat(
        [read_split(prep_dir, f"{prefix}train"), read_split(prep_dir, f"{prefix}valid")]
    )


class StageOutput:
    """`with StageOutput("train", out_dir, config, inputs) as out:` write to `out.path(name)`."""

    def __init__(self, stage: str, out_dir: str | Path, config: dict, inputs: list) -> None:
        self.stage = stage
        self.out_dir = Path(out_dir)
        self.config = config
        self.inputs = [str(p) for p in inputs]
        self.figures: dict = {}
        self.tmp = self.out_dir / f".partial-{os.getpid()}"

    def path(self, name: str) -> Path:
        return self.tmp / name

    def __enter__(self) -> StageOutput:
        self.out_dir_existed = self.out_dir.exists()
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.out_dir_existed or not any(self.out_dir.iterdir()):
                shutil.rmtree(self.out_dir, ignore_errors=True)
            return
        # the old manifest goes first, so a crash mid-move never leaves a stale "complete" mark
        (self.out_dir / MANIFEST).unlink(missing_ok=True)
        outputs = sorted(p.name for p in self.tmp.iterdir())
        for name in outputs:
            target = self.out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            (self.tmp / name).replace(target)
        self.tmp.rmdir()
        manifest = {
            "stage": self.stage,
            "inputs": self.inputs,
            "outputs": outputs,
            "seconds": round(time.perf_counter() - _stage_start, 3),
            "figures": self.figures,
            "config": self.config,
        }
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        print(f"{self.stage}: done in {manifest['seconds']:.1f} s", flush=True)


def prune_empty(path: str | Path, stop: str | Path) -> None:
    """Remove `path` and its parents up to (not including) `stop` while they are empty: what
    Hydra created for a stage that then failed."""
    path, stop = Path(path).resolve(), Path(stop).resolve()
    while path != stop and stop in path.parents and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent
