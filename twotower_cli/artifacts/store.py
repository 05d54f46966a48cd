"""Stage outputs you can trust: one writer per stage dir, written aside and moved into place only
when complete, a manifest with each output's content hash and the lineage of what it was made
from, checked again by every stage that reads it.

- `StageOutput` wraps a whole stage: it takes the stage dir's lock (a second writer fails fast),
  removes what dead writers left (`.partial-*`), writes into a fresh `.partial-<pid>-<random>`
  dir, and on success hashes the outputs, moves them into place and writes `manifest.json` last.
  A stage that fails removes only what it made.
- A manifest's `id` names that one output; `upstream` maps every earlier stage of the chain
  (preprocess -> sample -> train -> embed -> index) to the id it was made from.
- `require` returns an earlier stage's dir after checking that it is complete, made with the same
  settings, and that its files hash to what its manifest lists; `check_chain` that several dirs
  read together come from one chain.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twotower_cli.artifacts import tracking
from twotower_cli.artifacts.fields import badly_typed
from twotower_cli.artifacts.swap import (
    BACKUP,
    LOCK,
    MANIFEST,
    recover,
    recover_if_dead,
    swap_in,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.hashing import file_hash
from twotower_cli.core.layout import FILES

PARTIAL = ".partial-"
CHAIN = ("preprocess", "sample", "train", "embed", "index")
# what to run after an earlier stage's output changed
NEXT = {"preprocess": "sample", "sample": "train", "train": "embed", "embed": "index",
        "index": "evaluate"}  # fmt: skip
_verified: dict[tuple, dict] = {}  # (dir, manifest mtime_ns, size) -> manifest, hashes checked


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, GiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def read_manifest(stage_dir: str | Path, command: str | None = None) -> dict:
    """A stage dir's manifest; a broken one is a one-line error naming the command that
    rewrites it (`command`, else the stage word the dir's name suggests)."""
    path = Path(stage_dir) / MANIFEST
    rerun = f"rerun `twotower {command or _stage_of(path.parent)}`"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TwoTowerError(f"{path}: unreadable ({type(err).__name__}); {rerun}") from None
    if not isinstance(manifest, dict) or "stage" not in manifest:
        raise TwoTowerError(f"{path}: not a twotower manifest; {rerun}")
    bad = badly_typed(manifest)
    if bad:
        raise TwoTowerError(f"{path}: {bad}; {rerun}")
    return manifest


def _stage_of(stage_dir: Path) -> str:
    """The stage word a dir is named after (layout.py), else the whole pipeline."""
    if stage_dir.parent.name == "sample":  # <data>/sample/<sampler>
        return "sample"
    name = stage_dir.name
    return name if name in (*CHAIN, "evaluate", "export") else "run"


def lineage(manifest: dict) -> dict[str, str]:
    """stage -> id of every output in this one's chain, itself included."""
    return {**manifest.get("upstream", {}), manifest["stage"]: manifest.get("id", "")}


def require(
    stage_dir: str | Path, command: str, made_with: dict | None = None, ignore: tuple = ()
) -> Path:
    """The directory of an earlier stage, or a one-line error naming the command to run first.

    Complete (a manifest), intact (every output hashes to what the manifest lists) and made
    with the same settings: `made_with` ({section: resolved config}) must match the config that
    stage ran with. Keys named `seed` (a sweep over seeds may reuse one sample), `*_dir` (where
    inputs were read from, not what they hold) and the dotted keys in `ignore` are not compared.
    """
    stage_dir = Path(stage_dir)
    recover_if_dead(stage_dir)
    if not (stage_dir / MANIFEST).exists():
        raise TwoTowerError(f"{stage_dir} has no finished output: run `twotower {command}` first")
    then = verify(stage_dir, command).get("config", {})
    for section, now in (made_with or {}).items():  # a section, or a dotted key in one
        old = then
        for part in section.split("."):
            old = old.get(part) if isinstance(old, dict) else None
        diff = first_difference(old, now, section, ignore)
        if diff is not None:
            key, old, new = diff
            raise TwoTowerError(
                f"{stage_dir} was made with {key}={old!r}, not {new!r}: run `twotower {command}`"
                " with these settings first"
            )
    return stage_dir


def verify(stage_dir: Path, command: str) -> dict:
    """The dir's manifest, after checking each listed output's size and sha256 (once per
    process for an unchanged manifest)."""
    key = _cache_key(stage_dir)
    if key in _verified:
        return _verified[key]
    manifest = read_manifest(stage_dir, command)
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        raise TwoTowerError(f"{stage_dir / MANIFEST}: lists no output hashes (an older "
                            f"twotower wrote it): rerun `twotower {command}`")  # fmt: skip
    for name, want in outputs.items():
        path = stage_dir / name
        if (
            not path.is_file()
            or path.stat().st_size != want["bytes"]
            or (file_hash(path) != want["sha256"])
        ):
            raise TwoTowerError(f"{path}: missing, truncated or changed since `twotower "
                                f"{command}` wrote it: rerun `twotower {command}`")  # fmt: skip
    _verified[key] = manifest
    return manifest


def is_current(out_dir: Path, config: dict, inputs: list[Path], view=lambda c: c) -> bool:
    """Whether a stage's output is complete, intact, made with a config whose `view` (the part
    its output depends on) is this `config`'s, and from the outputs now in `inputs` (what `run`
    skips, as make would)."""
    for d in (out_dir, *inputs):
        recover_if_dead(d)
    if not (out_dir / MANIFEST).exists() or not all((d / MANIFEST).exists() for d in inputs):
        return False
    try:
        manifest = verify(out_dir, "")
        upstream = {}
        for d in inputs:
            upstream.update(lineage(read_manifest(d)))
    except TwoTowerError:
        return False
    return manifest.get("upstream") == upstream and view(manifest.get("config", {})) == view(
        config
    )


def sweep_partials(stage_dir: Path) -> None:
    """Remove what dead writers left in a stage dir that is not rewritten (`run` skipping it):
    under the dir's lock no writer is alive, so every `.partial-*` is a dead one's."""
    if not (stage_dir / LOCK).exists():
        return
    with open(stage_dir / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live writer: its partial dir is its own
        _remove_leftovers(stage_dir)


def _remove_leftovers(stage_dir: Path) -> None:
    """A killed writer's half-done move (undone), partial and backup dirs, and half-written
    manifests (`manifest.json.<pid>`)."""
    recover(stage_dir, MANIFEST)
    for stale in (*stage_dir.glob(f"{PARTIAL}*"), *stage_dir.glob(f"{BACKUP}*")):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in stage_dir.glob(f"{MANIFEST}.*"):
        stale.unlink(missing_ok=True)


def _cache_key(stage_dir: Path) -> tuple:
    stat = (stage_dir / MANIFEST).stat()
    return (str(stage_dir.resolve()), stat.st_mtime_ns, stat.st_size)


def check_chain(dirs: list[Path]) -> None:
    """Several finished dirs read together must come from one chain: wherever two of them name
    the same earlier stage, they name the same output of it."""
    seen: dict[str, tuple[str, Path]] = {}
    for d in dirs:
        for stage, ident in lineage(read_manifest(d)).items():
            if stage not in seen:
                seen[stage] = (ident, d)
                continue
            other_id, other = seen[stage]
            if ident != other_id:
                a, b = sorted((d, other), key=lambda p: _depth(read_manifest(p)["stage"]))
                stale = read_manifest(a)["stage"]
                raise TwoTowerError(
                    f"{b} was made from another {stage} output than {a} holds: rerun "
                    f"`twotower {NEXT.get(stale, stale)}` and the stages after it"
                )


def _depth(stage: str) -> int:
    return CHAIN.index(stage) if stage in CHAIN else len(CHAIN)


def first_difference(then, now, key: str, ignore: tuple = ()) -> tuple | None:
    """(dotted key, old value, new value) of the first difference between two configs."""
    if isinstance(then, dict) and isinstance(now, dict):
        for k in sorted(set(then) | set(now), key=str):
            if k == "seed" or str(k).endswith("_dir") or f"{key}.{k}" in ignore:
                continue
            diff = first_difference(then.get(k), now.get(k), f"{key}.{k}", ignore)
            if diff is not None:
                return diff
        return None
    return None if then == now else (key, then, now)


def read_split(prep_dir: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One table `twotower preprocess` wrote: `train`, `valid`, `test`, `tasks_train`, ...
    (`columns`: only those; a stage reads what it needs, not every label column)."""
    return pd.read_parquet(Path(prep_dir) / FILES.table(name), columns=columns)


def read_columns(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of a parquet file as numpy arrays, straight from Arrow (no DataFrame)."""
    # one column at a time, so Arrow's copy of only one is held beside the arrays; writable
    # (torch.from_numpy shares it): a copy only where Arrow's buffer is read-only
    return {c: np.require(pq.read_table(path, columns=[c]).column(c).to_numpy(), requirements="W")
            for c in columns}  # fmt: skip


def iter_split(prep_dir: Path, name: str, columns: list[str],
               rows: int = 1_000_000) -> Iterator[pd.DataFrame]:  # fmt: skip
    """`read_split`'s table in batches of `rows`: memory bounded by a batch at any log size."""
    for batch in pq.ParquetFile(Path(prep_dir) / FILES.table(name)).iter_batches(
        rows, columns=columns
    ):
        yield batch.to_pandas()


def write_batches(path: Path, frames: Iterable[pd.DataFrame]) -> int:
    """DataFrames with one schema appended to one parquet file; returns the rows written."""
    writer, n = None, 0
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            n += len(frame)
    finally:
        if writer is not None:
            writer.close()
    return n


SEEN = ("train", "valid")  # the splits a user has met before the test period
# `fit_on` -> the splits sample and train learn from: the training split, or training and
# validation (the refit of a configuration picked on validation: `twotower tune`)
FIT_ON = {"train": ("train",), "train+valid": SEEN}


def read_splits(prep_dir: Path, names: tuple[str, ...], columns: list[str] | None = None,
                prefix: str = "") -> pd.DataFrame:  # fmt: skip
    """Tables of `twotower preprocess` one after the other (`read_split` of each)."""
    frames = [read_split(prep_dir, f"{prefix}{s}", columns) for s in names]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def iter_splits(prep_dir: Path, names: tuple[str, ...], columns: list[str],
                prefix: str = "") -> Iterator[pd.DataFrame]:  # fmt: skip
    """`read_splits` in batches (iter_split over each table in turn)."""
    for name in names:
        yield from iter_split(prep_dir, f"{prefix}{name}", columns)


def seen_rows(prep_dir: Path, prefix: str = "", columns: list[str] | None = None) -> pd.DataFrame:
    """Each user's train + validation rows: what evaluation and serving mask, and what the
    history feature reads at evaluation and serving time."""
    return read_splits(prep_dir, SEEN, columns, prefix)


def iter_seen(prep_dir: Path, columns: list[str], prefix: str = "") -> Iterator[pd.DataFrame]:
    """`seen_rows` in batches (iter_split over train, then valid)."""
    return iter_splits(prep_dir, SEEN, columns, prefix)


class StageOutput:
    """`with StageOutput("train", out_dir, config, inputs) as out:` around a whole stage; write
    to `out.path(name)`, set `out.figures` (and `out.sources`: raw files read, data/sources.py).
    `inputs` are the finished dirs the stage reads: their ids are taken on entering, before the
    stage reads them, and the output is refused if one changed before it is published."""

    def __init__(self, stage: str, out_dir: str | Path, config: dict, inputs: list) -> None:
        self.stage = stage
        self.out_dir = Path(out_dir)
        self.config = config
        self.inputs = [Path(p) for p in inputs]
        self.figures: dict = {}
        self.sources: list | None = None
        self.tmp = self.out_dir / f"{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def path(self, name: str) -> Path:
        return self.tmp / name

    def __enter__(self) -> StageOutput:
        self.start = time.perf_counter()
        self.made_dir = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lock = open(self.out_dir / LOCK, "a")  # noqa: SIM115 -- held until __exit__
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise TwoTowerError(f"{self.out_dir}: another twotower process is writing it; "
                                "wait for it or use another paths.out") from None  # fmt: skip
        _remove_leftovers(self.out_dir)  # their writers are dead: we hold the lock
        self.upstream = self._input_ids()  # what the stage is about to read
        self.tmp.mkdir()
        return self

    def _input_ids(self) -> dict[str, str]:
        upstream: dict[str, str] = {}
        for d in self.inputs:
            recover_if_dead(d)
            upstream.update(lineage(read_manifest(d)))
        return upstream

    def _check_inputs_unchanged(self) -> None:
        """Refuse to publish what was made from inputs another process replaced meanwhile."""
        now = self._input_ids()
        for stage, ident in self.upstream.items():
            if now.get(stage) != ident:
                raise TwoTowerError(
                    f"a new {stage} output was written while `twotower {self.stage}` read the "
                    f"old one: nothing published; rerun `twotower {self.stage}`"
                )

    def __exit__(self, exc_type, exc, tb) -> None:
        failed = exc_type is not None
        try:
            if not failed:
                self._publish()
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                recover(self.out_dir, MANIFEST)  # a move into place cut short: the old files back
            shutil.rmtree(self.tmp, ignore_errors=True)
            if failed:
                self._roll_back()
            self.lock.close()

    def _roll_back(self) -> None:
        """Leave the stage dir as it was: the lock goes when nothing else is in the dir, and the
        dir itself when this process made it and it is empty (what else is there, is kept)."""
        if {p.name for p in self.out_dir.iterdir()} <= {LOCK}:
            (self.out_dir / LOCK).unlink(missing_ok=True)
            if self.made_dir:
                self.out_dir.rmdir()

    def _publish(self) -> None:
        names = sorted(p.name for p in self.tmp.iterdir())
        outputs = {n: {"sha256": file_hash(self.tmp / n), "bytes": (self.tmp / n).stat().st_size}
                   for n in names}  # fmt: skip
        self._check_inputs_unchanged()
        manifest = {
            "stage": self.stage,
            "id": uuid.uuid4().hex,
            "upstream": self.upstream,
            "inputs": [str(p) for p in self.inputs],
            "outputs": outputs,
            "seconds": round(time.perf_counter() - self.start, 3),
            "peak_rss_gib": peak_rss_gib(),
            "figures": self.figures,
            "config": self.config,
            **({"sources": self.sources} if self.sources is not None else {}),
        }
        text = json.dumps(manifest, indent=1, default=str)
        # old files aside, new ones in, the manifest last; a kill leaves it recoverable (swap.py)
        swap_in(self.out_dir, self.tmp, names, MANIFEST, text, manifest["id"])
        self.manifest = manifest
        # just hashed: a later stage of this process reads it without hashing it again
        _verified[_cache_key(self.out_dir)] = manifest
        tracking.active().log_stage(self.out_dir, manifest)
        print(f"{self.stage}: done in {manifest['seconds']:.1f} s", flush=True)


def prune_empty(path: str | Path, stop: str | Path) -> None:
    """Remove `path` and its parents up to (not including) `stop` while they are empty: what
    Hydra created for a stage that then failed."""
    path, stop = Path(path).resolve(), Path(stop).resolve()
    while path != stop and stop in path.parents and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent
