"""Nothing stale passes (issue 26): a stage's inputs are the ones it read, a kill mid-publish
loses nothing, and a manifest is trusted only as far as its fields are what readers expect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SMALL, read_json, twotower

from e2e.test_integrity import ROOT, one_line_error
from twotower_cli.artifacts import swap
from twotower_cli.artifacts.store import (
    MANIFEST,
    StageOutput,
    read_manifest,
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


def redone(said: str) -> list[str]:
    order = ("preprocess", "sample", "train", "embed", "index", "evaluate")
    return [s for s in order if f"{s}: up to date" not in said]


@pytest.mark.parametrize(
    ("override", "stages_redone"),
    [("eval.freshness_prior=0.5", ["embed", "index", "evaluate"]),
     ("eval.max_users=10", ["evaluate"]),
     ("train.early_stop_k=10", ["train", "embed", "index", "evaluate"]),
     ("sampler.alpha=0.1", ["train", "embed", "index", "evaluate"]),  # read by train only
     ("dataset.engine_memory=512MB", [])],
)  # fmt: skip
def test_run_redoes_exactly_the_stages_a_changed_key_reaches(run_copy, capsys, override,
                                                             stages_redone):  # fmt: skip
    capsys.readouterr()
    assert twotower("run", *SMALL, f"paths.out={run_copy}", override) == 0
    assert redone(capsys.readouterr().out) == stages_redone
    assert twotower("run", *SMALL, f"paths.out={run_copy}", override) == 0
    assert redone(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("stage", "override", "message"),
    [("embed", "model.out_dim=16", "train was made with model.out_dim=64, not 16"),
     ("index", "train.epochs=40", "embed was made with train.epochs=3, not 40"),
     ("evaluate", "model=senet", "train was made with model._target_="),
     ("evaluate", "index.factory=HNSW32", "index.factory='Flat', not 'HNSW32'"),
     ("evaluate", "eval.freshness_prior=0", "eval.freshness_prior=1.0, not 0")],
)  # fmt: skip
def test_overrides_that_contradict_the_model_are_refused(run_copy, capsys, stage, override,
                                                         message):  # fmt: skip
    out_dir = stage_dir(run_copy, stage)
    before = read_manifest(out_dir)["id"]
    if override == "model=senet":  # senet's run dir must hold the dssm model to contradict it
        shutil.copytree(out_dir.parent, out_dir.parent.with_name("senet"))
        out_dir = out_dir.parent.with_name("senet") / stage
    assert twotower(stage, *SMALL, f"paths.out={run_copy}", override) == 2
    line = one_line_error(capsys)
    assert message in line and "run `twotower" in line, line
    assert read_manifest(out_dir)["id"] == before
    # search-time settings and how training ran are no contradiction
    ok = ("index.nprobe=4", "train.resume=never", "train.device=cpu")
    assert twotower("evaluate", *SMALL, f"paths.out={run_copy}", *ok) == 0


def test_a_checkpoint_declaring_huge_tables_is_refused_before_allocating(run_copy, tmp_path):
    import resource

    import torch

    from twotower_cli.artifacts import checkpoint

    good = torch.load(run_copy.joinpath(*ROOT, "train", "model.pt"), weights_only=True)
    schema = {side: [dict(f) for f in fields] for side, fields in good["schema"].items()}
    field = next(f for f in schema["user"] if f.get("vocab_size"))
    field["vocab_size"] = 10_000_000  # x embed_dim 32 x 4 bytes = 1.28 GB if it were built
    crafted = tmp_path / "model.pt"
    torch.save({**good, "schema": schema}, crafted)
    assert crafted.stat().st_size < 2_000_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(TwoTowerError, match=r"does not rebuild its model \(.*the schema and"):
        checkpoint.load(crafted)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000
    # the same for arguments: a 10**6-wide embedding dim
    torch.save({**good, "args": {**good["args"], "embed_dim": 1_000_000}}, crafted)
    with pytest.raises(TwoTowerError, match="does not rebuild its model"):
        checkpoint.load(crafted)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000
    model, _ = checkpoint.load(run_copy.joinpath(*ROOT, "train", "model.pt"))
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def test_a_full_disk_while_writing_is_one_line(run_copy: Path, monkeypatch, capsys):
    import errno

    index_dir = stage_dir(run_copy, "index")
    before = read_manifest(index_dir)["id"]

    def disk_full(index, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(stages.faiss, "write_index", disk_full)
    assert twotower("index", *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert line.startswith("twotower index: error: ") and "No space left on device" in line
    assert read_manifest(index_dir)["id"] == before and not list(index_dir.glob(".partial-*"))


def test_report_reads_no_input_dir_the_run_was_not_made_from(run_copy, tmp_path, capsys):
    # a train manifest pointing its inputs at another preprocess output (a foreign dir)
    elsewhere = tmp_path / "elsewhere" / "preprocess"
    shutil.copytree(stage_dir(run_copy, "preprocess"), elsewhere)
    republish(elsewhere, [])
    path = stage_dir(run_copy, "train") / MANIFEST
    manifest = read_json(path)
    manifest["inputs"][0] = str(elsewhere)
    path.write_text(json.dumps(manifest))
    assert twotower("report", *SMALL, f"paths.out={run_copy}") == 2
    line = one_line_error(capsys)
    assert "was made from another preprocess output than" in line and str(elsewhere) in line
