"""The identity of the raw files a data set is read from (`twotower preprocess` records it in
its manifest's `sources`; `twotower run` compares it before calling preprocess up to date).

A loader module that reads files names them with `raw_files(**load_settings)`. Each file's
identity is its size, modification and change times, inode and sha256. A check costs one
`stat` per file while the stat key is unchanged; only when it changed (a copy, a touch, an
export overwritten in place) is the file hashed again (~1.5 GB/s), so a file touched but not
changed is still current, and a changed one is noticed even with the same size and mtime
(the change time cannot be set back).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.hashing import file_hash

STAT_KEY = ("bytes", "mtime_ns", "ctime_ns", "inode")


def raw_files(load: dict) -> list[Path]:
    """The files the loader `load["_target_"]` reads with these settings (none for a loader
    that generates its data)."""
    module_name = str(load.get("_target_", "")).rpartition(".")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    named = getattr(module, "raw_files", None)
    if named is None:
        return []
    return [Path(p) for p in named(**{k: v for k, v in load.items() if k != "_target_"})]


def _stat_key(path: Path) -> dict:
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}  # fmt: skip


def identify(paths: list[Path]) -> list[dict]:
    """Each file's path, stat key and sha256 (the stat taken before the hash: a file written
    while it is hashed has another stat key afterwards, so it is not taken as current)."""
    out = []
    for path in paths:
        key = _stat_key(path)
        out.append({"path": str(path), **key, "sha256": file_hash(path)})
    return out


def check_unchanged_since(recorded: list[dict], stage: str) -> None:
    """TwoTowerError if a file changed after `recorded` was taken (while a stage read it)."""
    for entry in recorded:
        path = Path(entry["path"])
        if not path.exists() or _stat_key(path) != {k: entry[k] for k in STAT_KEY}:
            raise TwoTowerError(f"{path}: changed while `twotower {stage}` read it; "
                                f"rerun `twotower {stage}`")  # fmt: skip


def changed(recorded, paths: list[Path]) -> str | None:
    """Why the files `paths` are not the ones `recorded` (a manifest's `sources`), or None."""
    if not isinstance(recorded, list) or not all(isinstance(e, dict) for e in recorded):
        return "no record of the raw files it read"
    if [e.get("path") for e in recorded] != [str(p) for p in paths]:
        return "other raw files than it read"
    for entry, path in zip(recorded, paths, strict=True):
        if not path.is_file():
            return f"{path} is gone"
        key = _stat_key(path)
        if key == {k: entry.get(k) for k in STAT_KEY}:
            continue
        if key["bytes"] != entry.get("bytes") or file_hash(path) != entry.get("sha256"):
            return f"{path} changed since it was read"
    return None
