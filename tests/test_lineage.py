"""Nothing stale passes (issue 26): a stage's inputs are the ones it read, a kill mid-publish
loses nothing, and a manifest is trusted only as far as its fields are what readers expect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SMALL, read_json, twotower
from test_integrity import ROOT, one_line_error

from twotower_cli.artifacts import swap
from twotower_cli.artifacts.store import (
    MANIFEST,
    StageOutput,
    read_manifest,
    require,
    verify,
)
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.pipeline import stages
from twotower_cli.training import fitting


@pytest.fixture
def run_copy(small_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    shutil.copytree(small_run, out)
    return out


def stage_dir(out: Path, stage: str) -> Path:
    if stage == "preprocess":
        return out / "synthetic" / "preprocess"
    if stage == "sample":
        return out.joinpath(*ROOT[:3])
    return out.joinpath(*ROOT, stage)


def republish(d: Path, inputs: list[Path]) -> str:
    """What another `twotower <stage>` finishing does: the same files under a new id."""
    m = read_manifest(d)
    with StageOutput(m["stage"], d, m["config"], inputs) as out:
        for name in m["outputs"]:
            shutil.copy(d / name, out.path(name))
        out.figures = m["figures"]
    return out.manifest["id"]


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


def test_ctrl_c_while_index_moves_its_files_keeps_the_previous_index(run_copy, monkeypatch,
                                                                     capsys):  # fmt: skip
    index_dir = stage_dir(run_copy, "index")
    before = read_manifest(index_dir)["id"]
    moved = []

    def interrupted(src, dst):
        moved.append(src)
        if len(moved) == 2:  # the old items.faiss is aside, the new one not yet in: Ctrl-C
            raise KeyboardInterrupt
        swap.os.replace(src, dst)

    monkeypatch.setattr(swap, "_move", interrupted)
    assert twotower("index", *SMALL, f"paths.out={run_copy}") == 130
    assert (
        one_line_error(capsys)
        == "twotower index: interrupted; what it was writing is not published"
    )
    monkeypatch.undo()
    assert read_manifest(index_dir)["id"] == before
    verify(index_dir, "index")
    assert twotower("evaluate", *SMALL, f"paths.out={run_copy}") == 0


@pytest.mark.parametrize(
    ("stage", "hook", "upstream"),
    [("train", (fitting, "fit"), "sample"), ("embed", (stages, "encode_all"), "train"),
     ("evaluate", (stages, "evaluate_run"), "index")],
)  # fmt: skip
def test_an_input_rewritten_while_a_stage_reads_it_is_refused(run_copy, monkeypatch, capsys,
                                                             stage, hook, upstream):  # fmt: skip
    out_dir = stage_dir(run_copy, stage)
    before = read_manifest(out_dir)["id"]
    inputs = {"sample": ["preprocess"], "train": ["preprocess", "sample"], "index": ["embed"]}
    owner, name = hook
    real = getattr(owner, name)

    def meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        if not meanwhile.done:  # another `twotower <upstream>` finishes while this one reads
            meanwhile.done = True
            republish(stage_dir(run_copy, upstream),
                      [stage_dir(run_copy, s) for s in inputs[upstream]])  # fmt: skip
        return result

    meanwhile.done = False
    monkeypatch.setattr(owner, name, meanwhile)
    assert twotower(stage, *SMALL, f"paths.out={run_copy}", "train.resume=never") == 2
    line = one_line_error(capsys)
    assert f"a new {upstream} output was written while `twotower {stage}` read" in line
    assert read_manifest(out_dir)["id"] == before  # nothing published
    verify(out_dir, stage)
    monkeypatch.undo()
    # `run` redoes exactly the stages after the rewritten one
    assert twotower("run", *SMALL, f"paths.out={run_copy}") == 0
    said = capsys.readouterr().out
    order = ("preprocess", "sample", "train", "embed", "index", "evaluate")
    for s in order:
        assert (f"{s}: up to date" in said) == (order.index(s) <= order.index(upstream)), s


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda m: {**m, "upstream": ["embed"]}, "upstream is a list, not a dict"),
     (lambda m: {**m, "id": 7}, "id is a int, not a str"),
     (lambda m: {**m, "outputs": {"items.faiss": {"sha256": "0" * 64, "bytes": "12"}}},
      "output 'items.faiss' lacks a sha256 string and a bytes integer"),
     (lambda m: {**m, "outputs": {"../../../../../../etc/hostname": {"sha256": "0", "bytes": 1}}},
      "output '../../../../../../etc/hostname' is not a file of the stage dir"),
     (lambda m: {**m, "outputs": {"/etc/hostname": {"sha256": "0", "bytes": 1}}},
      "output '/etc/hostname' is not a file of the stage dir")],
)  # fmt: skip
def test_a_manifest_with_wrong_types_or_outside_files_is_one_line(run_copy, capsys, edit,
                                                                  message):  # fmt: skip
    path = stage_dir(run_copy, "index") / MANIFEST
    path.write_text(json.dumps(edit(read_json(path))))
    assert twotower("evaluate", *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert f"{path}: {message}; rerun `twotower index`" in line
    with pytest.raises(TwoTowerError, match="rerun"):
        read_manifest(path.parent)
