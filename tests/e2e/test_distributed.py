"""Data-parallel training (distributed.py): 2 ranks on gloo give the one-process loss and
gradients of the same global batch; `train.nproc=2` end to end; a killed worker fails the run.

The equality tests start 2 processes with torch.multiprocessing (spawn) and a file rendezvous;
the end-to-end tests go through the CLI, i.e. torch's elastic launcher."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMALL, read_json, twotower

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.models.dssm import DSSM
from twotower_cli.samplers import InBatchSampler, MixedSampler, RandomNegativeSampler
from twotower_cli.training import distributed, negatives, sparse_sync
from twotower_cli.training.losses import bce, inbatch_softmax
from twotower_cli.training.trainer import TrainSettings, gather, optimizers, user_features

N_USERS, N_ITEMS, B, N_NEG = 12, 30, 16, 3
SCHEMA = {
    "user": [
        {"name": "user", "kind": "categorical", "vocab_size": N_USERS + 1},
        {"name": "age", "kind": "categorical", "vocab_size": 5},
    ],
    "item": [
        {"name": "item", "kind": "categorical", "vocab_size": N_ITEMS + 1},
        {"name": "genres", "kind": "multihot", "vocab_size": 6, "max_len": 3},
    ],
}
# sampler and loss of each case; the streaming case runs two batches (its estimate's state
# after the first one must be the same on every rank)
CASES = {
    "inbatch_exact_logq": (lambda: InBatchSampler("exact"), inbatch_softmax),
    "inbatch_streaming_logq": (lambda: InBatchSampler("streaming", alpha=0.5), inbatch_softmax),
    "mixed": (lambda: MixedSampler(n_uniform=8), inbatch_softmax),
    "bce_random_negatives": (lambda: RandomNegativeSampler(n_neg=N_NEG), bce),
    "inbatch_with_row_negatives": (lambda: RandomNegativeSampler(n_neg=N_NEG), inbatch_softmax),
    # train.sparse_embeddings: the id tables' gradients are sparse, all-reduced as such (gloo)
    "inbatch_sparse_tables": (lambda: InBatchSampler("exact"), inbatch_softmax),
}


def tables() -> tuple[dict, dict, dict, torch.Tensor]:
    """User and item tables, one global batch and the items' log Q. 12 users for 16 rows and
    items drawn from 30: repeated users and items, so the same-user and accidental-hit masks
    have work on columns that live on the other rank."""
    g = torch.Generator().manual_seed(0)
    users = {
        "user": torch.arange(N_USERS + 1),
        "age": torch.randint(0, 5, (N_USERS + 1,), generator=g),
    }
    items = {"item": torch.arange(N_ITEMS + 1),
             "genres": torch.randint(0, 6, (N_ITEMS + 1, 3), generator=g)}  # fmt: skip
    batch = {
        "user": torch.randint(1, N_USERS + 1, (B,), generator=g),
        "item": torch.randint(1, N_ITEMS + 1, (B,), generator=g),
        "label": torch.ones(B),
        "neg": torch.randint(1, N_ITEMS + 1, (B, N_NEG), generator=g),
    }
    log_q = torch.log_softmax(torch.randn(N_ITEMS + 1, generator=g), 0)
    return users, items, batch, log_q


def one_step(case: str, group: distributed.Group,
             mode: str = "global") -> tuple[float, dict[str, torch.Tensor]]:  # fmt: skip
    """This rank's loss on its slice of the global batch(es) and every parameter's gradient
    after backward (under a group: DDP's average over the ranks), with train.dist_negatives
    `mode`."""
    make_sampler, loss_fn = CASES[case]
    users, items, global_batch, log_q = tables()
    sampler = make_sampler()
    torch.manual_seed(0)
    model = DSSM(SCHEMA, embed_dim=8, hidden=[16], out_dim=8, dropout=0.0, history=False)
    if case == "inbatch_sparse_tables":
        optimizers(model, TrainSettings(batch_size=B // 2, sparse_embeddings=True))
        assert model.item_fields.tables["item"].sparse  # 31 rows > 8 per rank
    step = distributed.step_loss(model, loss_fn, group, mode)
    batch_fn = sampler.batch_fn(log_q, seed=3)
    if not isinstance(sampler, RandomNegativeSampler):
        global_batch.pop("neg")
    rank, world = group.rank, group.world_size
    if case == "inbatch_streaming_logq":  # a first batch moves the estimate
        negatives.rank_batch(dict(global_batch), batch_fn, rank, world, mode)
    batch = negatives.rank_batch(global_batch, batch_fn, rank, world, mode)
    return _loss_and_grads(model, step, users, items, batch)


def _loss_and_grads(model, step, users, items, batch) -> tuple[float, dict[str, torch.Tensor]]:
    neg = batch.get("neg")
    neg_feats = gather(items, neg.reshape(-1)) if neg is not None else None
    loss = step(user_features(users, batch), gather(items, batch["item"]), batch, neg_feats)
    loss.backward()
    return loss.item(), {n: _dense(p.grad) for n, p in model.named_parameters()}


def one_process_on_slices(case: str) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """What train.dist_negatives=local should give on 2 ranks, in one process and without
    negatives.py: the global batch as two batches of B/2 rows, the sampler fed the first then
    the second (both global batches of the streaming case), the loss and gradients of each."""
    make_sampler, loss_fn = CASES[case]
    users, items, global_batch, log_q = tables()
    batch_fn = make_sampler().batch_fn(log_q, seed=3)
    if not isinstance(make_sampler(), RandomNegativeSampler):
        global_batch.pop("neg")
    halves = [{k: t[: B // 2] for k, t in global_batch.items()},
              {k: t[B // 2 :] for k, t in global_batch.items()}]  # fmt: skip
    if batch_fn is not None:
        if case == "inbatch_streaming_logq":
            [batch_fn(dict(h)) for h in halves]
        halves = [batch_fn(h) for h in halves]
    out = []
    for half in halves:
        torch.manual_seed(0)
        model = DSSM(SCHEMA, embed_dim=8, hidden=[16], out_dim=8, dropout=0.0, history=False)
        if case == "inbatch_sparse_tables":
            optimizers(model, TrainSettings(batch_size=B // 2, sparse_embeddings=True))
        step = distributed.step_loss(model, loss_fn, distributed.Group())
        out.append(_loss_and_grads(model, step, users, items, half))
    return out


def _dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce().to_dense() if grad.is_sparse else grad.clone()


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        group = distributed.current()
        results = {case: one_step(case, group) for case in CASES}
        results |= {f"local/{case}": one_step(case, group, "local") for case in CASES}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Each case's (loss, gradients) on each of 2 gloo ranks."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_rank, args=(2, str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_the_batch_repeats_users_and_items_across_the_two_slices():
    # so the same-user and accidental-hit masks of one rank's rows hit the other rank's columns
    _, _, batch, _ = tables()
    for key in ("user", "item"):
        assert set(batch[key][: B // 2].tolist()) & set(batch[key][B // 2 :].tolist()), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_give_the_one_process_loss_and_gradients(two_ranks, case):
    loss, grads = one_step(case, distributed.Group())
    # each rank's loss is the mean over its 8 rows; the global loss is the mean of the two
    assert sum(r[case][0] for r in two_ranks) / 2 == pytest.approx(loss, abs=1e-5)
    assert two_ranks[0][case][0] != pytest.approx(two_ranks[1][case][0], abs=1e-4)
    for rank in two_ranks:
        assert set(rank[case][1]) == set(grads)
        for name, g in grads.items():
            assert torch.allclose(rank[case][1][name], g, atol=1e-5, rtol=0), (case, name)
    # the gradients are not all zero (the comparison means something)
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_negatives_make_each_rank_one_process_on_its_slice(two_ranks, case):
    # train.dist_negatives=local: rank r's loss is one process's loss on the r-th half of the
    # global batch (its rows its only columns), and both ranks' gradients are the mean of the
    # two halves' gradients (DDP's average)
    halves = one_process_on_slices(case)
    for r, rank in enumerate(two_ranks):
        assert rank[f"local/{case}"][0] == pytest.approx(halves[r][0], abs=1e-5)
        for name, g0 in halves[0][1].items():
            mean = (g0 + halves[1][1][name]) / 2
            assert torch.allclose(rank[f"local/{case}"][1][name], mean, atol=1e-5, rtol=0), name
    if CASES[case][1] is inbatch_softmax:  # fewer columns: not the global loss
        assert two_ranks[0][f"local/{case}"][0] != pytest.approx(two_ranks[0][case][0], abs=1e-4)
    else:  # bce scores each row against its own negatives: the same under both
        assert two_ranks[0][f"local/{case}"][0] == pytest.approx(two_ranks[0][case][0], abs=1e-6)


def test_local_negatives_count_log_q_in_the_rank_slice():
    # batch of 8 on 2 ranks: a column's exact logQ is the log of its expected count among the
    # 4 rows of the slice, log(4 x Q): with Q = 1/4 for every item, log(1) = 0 (global: the
    # 8 rows of the batch, log(2))
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.25, 0.25]))  # id 0: padding
    batch = {"user": torch.arange(8), "item": torch.tensor([1, 2, 3, 4, 4, 3, 2, 1])}
    batch_fn = InBatchSampler("exact").batch_fn(log_q)
    local = negatives.rank_batch(dict(batch), batch_fn, 1, 2, "local")
    assert local["user"].tolist() == [4, 5, 6, 7] and "all.item" not in local
    assert torch.allclose(local["log_q"], torch.zeros(4))
    shared = negatives.rank_batch(dict(batch), batch_fn, 1, 2, "global")
    assert torch.allclose(shared["log_q"], torch.full((4,), float(np.log(2))))
    assert shared["all.item"].tolist() == [4, 3, 2, 1, 1, 2, 3, 4]  # this rank's rows first
    # the streaming estimate counts slices: two slices a step, the same on every rank
    batch_fn = InBatchSampler("streaming").batch_fn(log_q)
    negatives.rank_batch(dict(batch), batch_fn, 0, 2, "local")
    assert batch_fn.streaming.step == 2


def test_batch_bounds_cut_the_last_batch_to_equal_slices():
    # 10 examples, batch 4: [0, 4) [4, 8) and the last 2; on 3 ranks the 4-row batches cannot
    # be split, but batch_bounds only cuts the last one: the trainer checks batch % world first
    assert distributed.batch_bounds(10, 4, 1) == [(0, 4), (4, 8), (8, 10)]
    assert distributed.batch_bounds(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    # 11 examples on 2 ranks: the last 3 rows become 2 (one row of the epoch skipped)
    assert distributed.batch_bounds(11, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    # a last batch of 1 row on 2 ranks is dropped
    assert distributed.batch_bounds(9, 4, 2) == [(0, 4), (4, 8)]


def test_local_rows_slice_rows_and_keep_shared_negatives_whole():
    batch = {"user": torch.arange(8), "log_q": torch.arange(8.0), "neg": torch.tensor([5, 6, 7])}
    rows = negatives.local_rows(batch, 1, 2)
    assert rows["user"].tolist() == [4, 5, 6, 7] and rows["log_q"].tolist() == [4, 5, 6, 7]
    assert rows["neg"].tolist() == [5, 6, 7]


def test_sparse_pairs_travel_exactly_and_pad_to_the_lookups():
    # ids [4, 0, 2]: 3 lookups, but the padding row 0 gets no gradient pair, so the rank's 2
    # pairs are padded to 3 with row -1; the rows travel as the bits of float32 columns
    table = torch.nn.Embedding(5, 3, padding_idx=0, sparse=True)
    (table(torch.tensor([4, 0, 2])) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    part = sparse_sync._pairs(table.weight, 3)
    rows, values = sparse_sync._unpack(part)
    assert part.shape == (3, 2 + 3) and part.dtype == torch.float32
    assert rows.tolist() == [4, 2, -1]
    assert values.tolist() == [[1.0, 2.0, 3.0]] * 2 + [[0.0, 0.0, 0.0]]


def test_settings_are_checked_with_the_key_named():
    with pytest.raises(TwoTowerError, match="train.backend: 'mpi'"):
        distributed.DistSettings(backend="mpi")
    with pytest.raises(TwoTowerError, match="train.nproc must be >= 1"):
        distributed.DistSettings(nproc=0)
    with pytest.raises(TwoTowerError, match="train.dist_timeout_s must be > 0"):
        distributed.DistSettings(dist_timeout_s=0)
    assert distributed.resolve_backend("auto", "cpu") == "gloo"


def test_dist_negatives_is_checked_with_one_line(out_dir, capsys):
    assert twotower("train", *SMALL, f"paths.out={out_dir}", "train.dist_negatives=all") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["twotower train: error: train.dist_negatives: 'all' not in ('global', 'local')"]


def test_a_batch_size_the_ranks_cannot_share_fails_before_launching(out_dir, capsys):
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths) == 0
    capsys.readouterr()
    assert twotower("train", *SMALL, paths, "train.nproc=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.batch_size=256 is not divisible by train.nproc=3" in err[0]
    assert not (out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train").exists()


def test_other_stages_refuse_to_run_once_per_rank_under_torchrun(monkeypatch, capsys, out_dir):
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert twotower("preprocess", *SMALL, f"paths.out={out_dir}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "under torchrun (WORLD_SIZE=2): only train runs" in err[0]


class Output:
    """A subprocess's merged stdout and stderr, read on a thread (progress bars end lines
    with carriage returns, so readline would wait)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = re.search(pattern, self.text)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n{self.text[-3000:]}")


def start(*args: str) -> tuple[subprocess.Popen, Output]:
    script = Path(sys.executable).with_name("twotower")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)  # fmt: skip
    return proc, Output(proc)


def worker_pids(text: str) -> dict[int, int]:
    return {int(r): int(p) for r, p in re.findall(r"train: rank (\d) of 2, pid (\d+)", text)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    )


@pytest.mark.slow
def test_nproc_2_runs_every_stage_and_leaves_no_process(out_dir: Path):
    proc, out = start("run", *SMALL, f"paths.out={out_dir}", "threads=1", "train.nproc=2")
    assert proc.wait(timeout=300) == 0, out.text[-3000:]
    out.thread.join(timeout=10)
    assert "| recall@20 |" in out.text
    pids = worker_pids(out.text)
    assert sorted(pids) == [0, 1]
    assert not any(alive(p) for p in pids.values())
    run_root = out_dir / "synthetic" / "sample" / "inbatch" / "dssm"
    figures = read_json(run_root / "train" / "manifest.json")["figures"]
    assert figures["world_size"] == 2 and figures["backend"] == "gloo"
    assert figures["global_batch"] == 256 and figures["samples_per_s"] > 0
    history = read_json(run_root / "train" / "history.json")
    assert len(history) == 3 and all(h["samples_per_s"] > 0 for h in history)
    assert (run_root / "evaluate" / "metrics.json").exists()


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_with_one_line_naming_its_rank(out_dir: Path):
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths) == 0
    timeout = 20
    proc, out = start("train", *SMALL, paths, "threads=1", "train.nproc=2", "train.epochs=500",
                      "train.patience=500", f"train.dist_timeout_s={timeout}")  # fmt: skip
    try:
        out.wait_for(r"train: rank 1 of 2, pid \d+")
        # rank 0's progress line for epoch 3 (stderr is a pipe: one line per epoch)
        out.wait_for(r"train:.*\| 3/500 ")
        pids = worker_pids(out.text)
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=timeout + 30)
    finally:
        proc.kill()
    assert code != 0
    assert time.monotonic() - killed < timeout
    out.thread.join(timeout=10)
    last = [line for line in out.text.strip().splitlines() if line.strip()][-1]
    assert (
        last
        == f"twotower train: error: rank 1 (pid {pids[1]}) failed: killed by signal 9 (SIGKILL)"
    )
    assert not any(alive(p) for p in pids.values())
    # nothing written: no train output at all
    assert not (
        out_dir / "synthetic" / "sample" / "inbatch" / "dssm" / "train" / "manifest.json"
    ).exists()


def test_python_dash_m_is_the_front_door():
    proc = subprocess.run([sys.executable, "-m", "twotower_cli", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("usage: twotower {preprocess|")
