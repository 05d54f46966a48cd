"""Nothing stale passes (issue 26): a stage's inputs are the ones it read, a kill mid-publish
loses nothing, and a manifest is trusted only as far as its fields are what readers expect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twotower_cli.artifacts import swap
from twotower_cli.artifacts.store import (
    MANIFEST,
    StageOutput,
    require,
    verify,
)


def write(d: Path, files: dict[str, str], stage: str = "x") -> dict:
    with StageOutput(stage, d, {}, []) as out:
        for name, text in files.items():
            out.path(name).write_text(text)
    return out.manifest


class Killed(BaseException):
    """kill -9 stand-in: nothing after it runs (swap_in is called bare, no __exit__)."""


@pytest.mark.parametrize("steps", range(6))
def test_a_kill_at_any_move_keeps_the_previous_output(tmp_path: Path, monkeypatch, steps):
    d = tmp_path / "stage"
    old = write(d, {"a.txt": "old a", "b.txt": "old b"})
    # the next publish: a and b replaced, c new: 5 renames (a and b aside and in, c in), then
    # the new manifest; killed before step `steps`
    tmp = d / ".partial-1-feedbeef"
    tmp.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp / name).write_text(f"new {name[0]}")
    calls = []

    def move(src, dst):
        if len(calls) == steps:
            raise Killed
        calls.append(src)
        swap.os.replace(src, dst)

    def write_atomic(path, text):
        if path.name == MANIFEST:
            move(None, None)  # the commit is step 5
        real_write(path, text)

    real_write = swap.write_atomic
    monkeypatch.setattr(swap, "write_atomic", write_atomic)
    monkeypatch.setattr(swap, "_move", move)
    new = {**old, "id": "f" * 32}
    with pytest.raises(Killed):
        swap.swap_in(d, tmp, ["a.txt", "b.txt", "c.txt"], MANIFEST, json.dumps(new), new["id"])
    monkeypatch.undo()
    assert (d / swap.JOURNAL).exists()  # what a dead writer leaves
    # the next reader finds the previous complete output, intact (no dead writer holds the lock)
    assert verify(require(d, "x"), "x")["id"] == old["id"]
    assert {p.name for p in d.iterdir()} == {MANIFEST, ".lock", "a.txt", "b.txt", tmp.name}
    assert (d / "a.txt").read_text() == "old a" and (d / "b.txt").read_text() == "old b"
    write(d, {"a.txt": "next"})  # the next writer sweeps the partial dir
    assert not list(d.glob(".partial-*")) and not list(d.glob(".previous-*"))


def test_a_kill_after_the_manifest_keeps_the_new_output(tmp_path: Path, monkeypatch):
    d = tmp_path / "stage"
    write(d, {"a.txt": "old a"})
    monkeypatch.setattr(swap, "_forget", lambda out_dir, journal: None)  # killed before it
    new = write(d, {"a.txt": "new a"})
    monkeypatch.undo()
    assert (d / swap.JOURNAL).exists() and list(d.glob(".previous-*"))
    assert verify(require(d, "x"), "x")["id"] == new["id"]
    assert (d / "a.txt").read_text() == "new a"
    assert not (d / swap.JOURNAL).exists() and not list(d.glob(".previous-*"))
