"""Moving a stage's finished files into place so that a kill at any instant loses nothing
(store.StageOutput publishes through `swap_in`).

A journal (`.publish.json`: the new manifest's id, the partial dir, the backup dir, the names)
is written first; each old file is moved into a backup dir before its new one takes its name;
the new `manifest.json` replaces the old one in one rename (the commit point); then the journal
and the backup go. Until the commit the old manifest stays, so a process killed mid-move leaves
an old manifest beside some new files: `recover` (run under the stage dir's lock by the next
writer, by `run`, and by any stage that reads the dir) puts the old files back, or, when the new
manifest had been written, only clears the journal and the backup.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from twotower_cli.core.layout import FILES

LOCK = ".lock"  # a stage dir's writer holds it (store.StageOutput)
JOURNAL = FILES.publish_journal
MANIFEST = FILES.manifest
BACKUP = ".previous-"


def _move(src: Path, dst: Path) -> None:
    """One rename (a module function: tests inject a kill between two of them)."""
    os.replace(src, dst)


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a rename: the old content or the new, never half of one."""
    part = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        part.write_text(text)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def swap_in(out_dir: Path, tmp: Path, names: list[str], manifest_name: str,
            manifest_text: str, new_id: str) -> None:  # fmt: skip
    """`tmp`'s files `names` into `out_dir`, then the manifest, recoverably (module docstring)."""
    backup = out_dir / f"{BACKUP}{new_id[:12]}"
    backup.mkdir()
    journal = {"id": new_id, "tmp": tmp.name, "backup": backup.name, "names": names}
    write_atomic(out_dir / JOURNAL, json.dumps(journal))
    for name in names:
        target = out_dir / name
        if target.exists() or target.is_symlink():
            _move(target, backup / name)
        _move(tmp / name, target)
    write_atomic(out_dir / manifest_name, manifest_text)  # the commit point
    _forget(out_dir, journal)


def recover(out_dir: Path, manifest_name: str) -> bool:
    """Finish or undo a publish that a dead process left (the caller holds the dir's lock);
    whether there was one to recover."""
    journal = _read_journal(out_dir / JOURNAL)
    if journal is None:
        return False
    try:
        committed = json.loads((out_dir / manifest_name).read_text()).get("id") == journal["id"]
    except (OSError, ValueError, AttributeError):
        committed = False
    if not committed:
        backup, tmp = out_dir / journal["backup"], out_dir / journal["tmp"]
        for name in journal["names"]:
            target = out_dir / Path(name).name
            if (backup / name).exists():
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                _move(backup / name, target)  # the old file back over the new one
            elif target.exists() and not (tmp / name).exists():
                target.unlink()  # a new file with no old one: it was not there before
    _forget(out_dir, journal)
    return True


def _read_journal(path: Path) -> dict | None:
    try:
        journal = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)  # written aside and renamed: a broken one is not ours
        return None
    names = journal.get("names") if isinstance(journal, dict) else None
    plain = isinstance(names, list) and all(
        isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..") for n in names
    )
    if not plain or not all(isinstance(journal.get(k), str) for k in ("id", "tmp", "backup")):
        path.unlink(missing_ok=True)
        return None
    return journal


def _forget(out_dir: Path, journal: dict) -> None:
    (out_dir / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(out_dir / Path(journal["backup"]).name, ignore_errors=True)


def recover_if_dead(stage_dir: Path) -> None:
    """Undo (or finish) a move into place that a killed writer left half done, when
    no writer is alive: a reader then finds the previous complete output, not a mix."""
    if not (stage_dir / JOURNAL).exists():
        return
    try:
        lock = open(stage_dir / LOCK, "a")  # noqa: SIM115 -- closed below
    except OSError:
        return  # a read-only reader (serve as another user): the hashes still catch a mix
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its writer is alive (or it is this process's own)
        if recover(stage_dir, MANIFEST):
            print(f"{stage_dir}: a killed writer's move into place undone", flush=True)
