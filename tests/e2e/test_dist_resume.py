"""Data-parallel training that survives a kill (issue 26 item 4, issue 30): `train.nproc=2`
killed at a chosen point resumes from the one state every rank agrees on and ends with the
uninterrupted two-rank run's model; torchrun's restarts bring a killed group back the same way;
two torchrun agents (two "nodes" on 127.0.0.1, docs/scale.md's recipe) train the same model as
one node's two ranks. Kills are placed with TWOTOWER_KILL_AT (training/hooks.py), not timed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMALL, read_json, twotower

from e2e.test_distributed import Output, alive, worker_pids
from twotower_cli.training import distributed
from twotower_cli.training.hooks import KILL_ENV
from twotower_cli.training.resume import Resume

pytestmark = pytest.mark.slow
ARGS = [*SMALL, "threads=1", "train.epochs=4", "train.patience=4"]
ROOT = ("synthetic", "sample", "inbatch", "dssm")
DOCS = Path(__file__).parents[2] / "docs" / "scale.md"
TIMEOUT = 240  # no run here needs it: a hang fails the test instead of stalling the suite


def run(cmd: list[str], out: Path, kill_at: str | None = None) -> tuple[int, str]:
    """`cmd` (ending with train's overrides) on paths.out=out: (exit code, merged output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    proc = subprocess.Popen([*cmd, *ARGS, f"paths.out={out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)  # fmt: skip
    text = Output(proc)
    try:
        code = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
    text.thread.join(timeout=10)
    assert not any(alive(p) for p in worker_pids(text.text).values()), text.text[-2000:]
    return code, text.text


def twotower_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("twotower")), *args]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out.joinpath(*ROOT, "train", "model.pt"), weights_only=True)["state_dict"]


def assert_same_model(out: Path, reference: Path, atol: float) -> None:
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=atol), name
    ha = read_json(reference.joinpath(*ROOT, "train", "history.json"))
    hb = read_json(out.joinpath(*ROOT, "train", "history.json"))
    assert [h["valid_recall@20"] for h in ha] == [h["valid_recall@20"] for h in hb]
    assert not out.joinpath(*ROOT, "train", ".resume").exists()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """paths.out after preprocess and sample (copied by each test)."""
    out = tmp_path_factory.mktemp("dist_resume") / "prepared"
    assert twotower("preprocess", *ARGS, f"paths.out={out}") == 0
    assert twotower("sample", *ARGS, f"paths.out={out}") == 0
    return out


@pytest.fixture(scope="module")
def reference(prepared: Path) -> Path:
    """paths.out of an uninterrupted `twotower train train.nproc=2`."""
    out = prepared.with_name("reference")
    shutil.copytree(prepared, out)
    code, text = run(twotower_cmd("train", "train.nproc=2"), out)
    assert code == 0, text[-3000:]
    return out


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    return out


@pytest.mark.parametrize(
    ("kill_at", "resumes_after"),
    [
        ("saving@2:0", 1),  # rank 0 dies between writing epoch 2's state and renaming it
        ("saved@2:1", 2),  # rank 1 dies as soon as epoch 2 is saved
        ("step@3:1", 2),  # rank 1 dies halfway through epoch 3
    ],
)
def test_nproc_2_killed_resumes_to_the_uninterrupted_model(
    prepared, reference, tmp_path, kill_at, resumes_after
):
    out = copy_of(prepared, tmp_path)
    code, text = run(twotower_cmd("train", "train.nproc=2"), out, kill_at)
    rank = kill_at[-1]
    last = text.strip().splitlines()[-1]
    assert code == 2 and re.fullmatch(
        rf"twotower train: error: rank {rank} \(pid \d+\) failed: killed by signal 9 \(SIGKILL\)",
        last,
    ), text[-2000:]
    assert not out.joinpath(*ROOT, "train", "model.pt").exists()
    code, text = run(twotower_cmd("train", "train.nproc=2"), out)
    assert code == 0, text[-3000:]
    assert f"train: resuming after epoch {resumes_after} " in text
    assert_same_model(out, reference, atol=1e-6)


def test_killing_the_command_takes_its_workers_down_and_the_rerun_resumes(prepared, tmp_path):
    out = copy_of(prepared, tmp_path)
    # 16-row batches, 12 epochs: ~1 s an epoch, so the command is still training when killed
    slow = [*ARGS, "train.batch_size=16", "train.epochs=12", "train.patience=12",
            "sampler.n_uniform=0"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    proc = subprocess.Popen([*twotower_cmd("train", "train.nproc=2"), *slow, f"paths.out={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**env, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    text = Output(proc)
    state = out.joinpath(*ROOT, "train", ".resume", "state.pt")
    deadline = time.monotonic() + TIMEOUT
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = worker_pids(text.text)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(pids) == [0, 1] and state.exists()
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the workers notice the agent's store is gone
    assert not any(alive(p) for p in pids.values())
    assert not out.joinpath(*ROOT, "train", "model.pt").exists()
    rerun = subprocess.run([*twotower_cmd("train", "train.nproc=2"), *slow, f"paths.out={out}"],
                           capture_output=True, text=True, env=env, timeout=TIMEOUT)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert re.search(r"train: resuming after epoch \d+ ", rerun.stdout)
    assert len(read_json(out.joinpath(*ROOT, "train", "history.json"))) == 12


def test_torchrun_restarts_a_killed_group_from_the_last_finished_epoch(
    prepared, reference, tmp_path
):
    out = copy_of(prepared, tmp_path)
    cmd = torchrun("--standalone", "--nproc-per-node=2", "--max-restarts=1", "-m",
                   "twotower_cli", "train")  # fmt: skip
    code, text = run(cmd, out, kill_at="step@3:1")
    assert code == 0, text[-3000:]
    assert len(re.findall(r"train: rank 0 of 2", text)) == 2  # the group started twice
    assert "train: resuming after epoch 2 " in text
    assert_same_model(out, reference, atol=1e-6)


def recipe() -> str:
    """docs/scale.md's several-machines command (the block after `## Several machines`)."""
    section = DOCS.read_text().split("## Several machines", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
    return " ".join(line.rstrip("\\").strip() for line in lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_the_one_node_model_and_rank_0_alone_writes(prepared, reference,
                                                                    tmp_path):  # fmt: skip
    command = recipe().replace("HOST:PORT", f"127.0.0.1:{free_port()}")
    command = command.replace("RUN_ID", f"tt-test-{os.getpid()}")
    assert command.startswith("torchrun --nnodes=2 ") and "--rdzv-backend=c10d" in command
    outs = [tmp_path / f"node{n}" for n in range(2)]  # each node's own disk
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(KILL_ENV, None)
    procs, texts = [], []
    for out in outs:
        shutil.copytree(prepared, out)
        cmd = torchrun(*command.split()[1:], *ARGS, f"paths.out={out}")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env=env))  # fmt: skip
        texts.append(Output(procs[-1]))
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for t in texts:
        t.thread.join(timeout=10)
    assert codes == [0, 0], "\n".join(t.text[-2000:] for t in texts)
    # the rendezvous numbers the nodes; rank 0 is on the node whose log says so
    main = [n for n, t in enumerate(texts) if re.search(r"train: rank 0 of 2,", t.text)]
    assert len(main) == 1 and re.search(r"train: rank 1 of 2,", texts[1 - main[0]].text)
    assert outs[main[0]].joinpath(*ROOT, "train", "manifest.json").exists()
    # rank 1 wrote nothing (Hydra made the empty stage dir, its run dir)
    assert not list(outs[1 - main[0]].joinpath(*ROOT, "train").iterdir())
    assert_same_model(outs[main[0]], reference, atol=1e-5)


def test_multitask_on_several_ranks_is_refused_before_launching(out_dir, capsys):
    paths = f"paths.out={out_dir}"
    capsys.readouterr()
    assert twotower("train", *ARGS, paths, "model=multitask", "train.nproc=2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(distributed.MULTITASK), err


def _agree(rank: int, store: str, dirs: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        group = distributed.current()
        got = [Resume(Path(d), "fp").load(group) for d in dirs[rank]]
        torch.save([None if s is None else len(s["history"]) for s in got], f"{out}/r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_that_read_different_states_start_over_together(tmp_path, capfd):
    good = tmp_path / "good"
    good.mkdir()
    state = {"fingerprint": "fp", "world_size": 2, "history": [{}] * 3}
    torch.save(state, good / "state.pt")
    one_rank = tmp_path / "one_rank"
    one_rank.mkdir()
    torch.save({**state, "world_size": 1}, one_rank / "state.pt")
    missing = tmp_path / "missing"
    # per case, what rank 0 and rank 1 read: both the same file; rank 1 has no file (another
    # disk); a state saved by one rank
    dirs = [[good, good, one_rank], [good, missing, one_rank]]
    mp.spawn(_agree, args=(str(tmp_path / "store"), dirs, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    assert got == [[3, None, None], [3, None, None]]
    lines = capfd.readouterr().out.splitlines()
    assert lines == [
        f"train: not every rank can read {good / 'state.pt'} (epoch 3 on some ranks, none on "
        "others: a train dir on disks the nodes do not share?); starting over",
        f"train: {one_rank / 'state.pt'} was saved by 1 ranks, this run has 2; starting over",
    ]
