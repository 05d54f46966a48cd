"""Bad input is one line naming the key, file or value, and a non-zero exit, never a traceback
(issue 26.10): config values, an index that cannot be built, a full disk (Hydra's own writes
included), Ctrl-C before a stage runs, a serve setting given to another stage."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, twotower
from helpers import one_line

from twotower_cli import cli
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.retrieval.search import build_index
from twotower_cli.training import distributed
from twotower_cli.training.resume import Resume


@pytest.mark.parametrize(
    ("override", "message"),
    [("seed=abc", "seed must be an integer, got 'abc'"),
     ("dataset.engine_memory=1KB", "dataset.engine_memory: '1KB' is below the engine's minimum"),
     ("+train.foo=1", "train.foo: not a train setting; known: backend, batch_size"),
     ("+eval.foo=1", "eval.foo: not a eval setting"),
     ("+dataset.foo=1", "dataset.foo: not a dataset setting; known: engine_memory, label"),
     ("+dataset.split.foo=1", "dataset.split.foo: not a dataset.split setting"),
     ("+dataset.protocol.foo=1", "dataset.protocol.foo: not a dataset.protocol setting"),
     ("+dataset.protocol.mask=all", "dataset.protocol.mask: 'all' not in ('seen', 'none')"),
     ("+dataset.load.foo=1", "dataset.load.foo: not an argument of twotower_cli.data.synthetic")],
)  # fmt: skip
def test_config_values_are_one_line(tmp_path: Path, capsys, override, message):
    out = tmp_path / "outputs"
    assert twotower("preprocess", *SMALL, f"paths.out={out}", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twotower preprocess: error: "), err
    assert message in err[0]
    assert not (out / "synthetic" / "preprocess").exists()  # nothing ran


def test_an_unwritable_paths_out_is_one_line(tmp_path: Path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert twotower("preprocess", *SMALL, f"paths.out={a_file}/outputs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"twotower preprocess: error: paths.out={a_file}/outputs: {a_file} is not a "
                   "writable directory"]  # fmt: skip


def test_an_ivf_index_with_more_lists_than_items_is_one_line():
    vectors = np.random.default_rng(0).standard_normal((1682, 16)).astype(np.float32)
    with pytest.raises(TwoTowerError) as err:
        build_index(vectors, "IVF4096,Flat")
    assert str(err.value) == (
        "index.factory: 'IVF4096,Flat' cannot be built over 1682 item vectors (Number of "
        "training points (1682) should be at least as large as number of clusters (4096)); "
        "pick a smaller one"
    )
    assert build_index(vectors, "IVF16,Flat").ntotal == 1682


def test_a_full_disk_leaves_no_half_written_resume_state(tmp_path: Path, monkeypatch):
    one = distributed.Group()  # a group of one process: rank 0 writes
    resume = Resume(tmp_path / ".resume", "f" * 8)
    resume.save(one, 1, {"history": [{"epoch": 1}]})

    def disk_full(obj, path):
        Path(path).write_bytes(b"half a state")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        resume.save(one, 2, {"history": [{"epoch": 1}, {"epoch": 2}]})
    assert [p.name for p in resume.dir.iterdir()] == ["state.pt"]  # the last good state only
    monkeypatch.undo()
    assert len(resume.load(one)["history"]) == 1


def test_an_unwritable_paths_out_under_multirun_is_one_line(tmp_path: Path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert twotower("preprocess", "-m", *SMALL, f"paths.out={a_file}/outputs", "seed=0,1") == 2
    assert one_line(capsys) == (f"twotower preprocess: error: paths.out={a_file}/outputs: "
                                 f"{a_file} is not a writable directory")  # fmt: skip


def test_a_full_disk_while_hydra_writes_a_sweep_record_is_one_line(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    def disk_full(config, f, resolve=False):  # a failed write names no file, as the kernel's
        with open(f, "w") as file:
            file.write("half a config")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(OmegaConf, "save", disk_full)
    out = tmp_path / "outputs"
    assert twotower("preprocess", "-m", *SMALL, f"paths.out={out}", "seed=0,1") == 2
    assert one_line(capsys) == (f"twotower preprocess: error: {out}/multirun/multirun.yaml: "
                                 "No space left on device")  # fmt: skip
    assert not any(out.iterdir())  # the half-written record and its dir are gone; nothing ran


def test_a_full_disk_while_hydra_writes_its_hydra_dir_is_one_line(tmp_path, monkeypatch, capsys):
    from hydra.core import utils

    def disk_full(cfg, filename, output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / filename, "w") as file:
            file.write("half a config")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils, "_save_config", disk_full)
    out = tmp_path / "outputs"
    assert twotower("preprocess", *SMALL, f"paths.out={out}", "hydra.output_subdir=.hydra") == 2
    prep = out / "synthetic" / "preprocess"
    assert one_line(capsys) == (f"twotower preprocess: error: {prep}/.hydra/config.yaml: "
                                 "No space left on device")  # fmt: skip
    assert not any(out.iterdir())  # the stage dir Hydra made is pruned; nothing ran


def test_ctrl_c_while_composing_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_composes", interrupted)
    try:
        code = twotower("preprocess", *SMALL)
    except KeyboardInterrupt:  # escaped the front door (it would stop pytest itself)
        code = None
    assert code == 130
    assert one_line(capsys) == "twotower preprocess: interrupted"


# the console script's first line, `from twotower_cli.cli import main`, with Ctrl-C arriving
# while it imports omegaconf (what takes about half a second before `main` runs)
INTERRUPTED_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "omegaconf":
            raise KeyboardInterrupt

sys.meta_path.insert(0, Interrupt())
sys.argv = ["twotower", "preprocess"]
from twotower_cli.cli import main
"""


def test_ctrl_c_while_the_script_imports_is_one_line_and_exit_130():
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True,
                          text=True, timeout=120, cwd=Path(cli.__file__).parents[1])  # fmt: skip
    assert (done.returncode, done.stderr) == (130, "twotower preprocess: interrupted\n")
