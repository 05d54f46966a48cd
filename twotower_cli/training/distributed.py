"""Data-parallel training on torch.distributed (`twotower train train.nproc=N`, or any stage
under an external `torchrun ... -m twotower_cli train ...`).

One process per rank, each holding the whole model and the whole example table. Every rank draws
the same permutation, so every rank knows each global batch (`train.batch_size` rows), and
trains on its own slice of rows. Which negatives a rank's in-batch softmax sees,
`train.dist_negatives`, is negatives.py's: the global batch's (the default: the sampler's work
on the global batch, the other slices' item vectors gathered with an autograd all_gather, so
each row sees the one-process columns, masks included) or the rank's own slice's (`local`: no
gather, a rank's work independent of N). Each rank's loss is the mean over its own rows and
DDP averages the gradients; under `global` that is the gradient of the one-process loss (equal
slices: the mean of the slices' means is the mean). Per step that is, under `global`, one
all_gather and one reduce_scatter, then DDP's all-reduce and, with sparse tables, one
all_gather of their gradients (sparse_sync.py; docs/scale.md).

Launch: `launch` runs N local workers through torch's elastic launcher (what `torchrun
--standalone --nproc_per_node=N` does); a worker that dies ends the run with one line naming
its rank (the agent stops the others), and a collective that waits longer than
`train.dist_timeout_s` raises in the ranks still alive. No Hydra here.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.launcher import under_launcher
from twotower_cli.training.negatives import rank_loss
from twotower_cli.training.sparse_sync import SparseGradSync

BACKENDS = ("auto", "gloo", "nccl")
# the keys of conf/train/default.yaml that belong here, not to the training loop
KEYS = ("nproc", "backend", "dist_timeout_s")
# what torchrun (and the elastic launcher) put in each worker's environment
TRACKER_WARNING = "ignore:resource_tracker:UserWarning"
MULTITASK = (
    "model=multitask trains each task on a different subset of a batch's rows, which ranks "
    "cannot split into equal slices: train it in one process (train.nproc=1)"
)


@dataclass
class DistSettings:
    nproc: int = 1
    backend: str = "auto"
    dist_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise TwoTowerError(f"train.nproc must be >= 1, got {self.nproc}")
        if self.backend not in BACKENDS:
            raise TwoTowerError(f"train.backend: {self.backend!r} not in {BACKENDS}")
        if self.dist_timeout_s <= 0:
            raise TwoTowerError(f"train.dist_timeout_s must be > 0, got {self.dist_timeout_s}")


@dataclass(frozen=True)
class Group:
    """This process's place in the process group (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str = "none"

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Group:
    """The group this process has joined (`init`), or a group of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    return Group(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def resolve_device(device: str) -> str:
    """`train.device=auto`: CUDA when this machine has it, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """`auto`: nccl when training on CUDA, else gloo."""
    if backend not in BACKENDS:
        raise TwoTowerError(f"train.backend: {backend!r} not in {BACKENDS}")
    if backend == "auto":
        cuda = resolve_device(device).startswith("cuda") and torch.cuda.is_available()
        return "nccl" if cuda else "gloo"
    return backend


def init(settings: DistSettings, device: str = "cpu") -> Group:
    """Join the group the launcher's environment describes (a group of one without it)."""
    if not under_launcher() or int(os.environ["WORLD_SIZE"]) == 1:
        return current()
    if not dist.is_initialized():
        backend = resolve_backend(settings.backend, device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        timeout = timedelta(seconds=settings.dist_timeout_s)
        dist.init_process_group(backend, store=_attempt_store(timeout), timeout=timeout,
                                rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))  # fmt: skip
        atexit.register(shutdown)  # under torchrun no one else ends the group
    return current()


def _attempt_store(timeout: timedelta) -> dist.Store:
    """The launcher's store (env://), its keys prefixed by the group's restart: torchrun's
    agent keeps one store across `--max-restarts`, and a restarted rank could otherwise read
    the dead group's addresses (gloo: "connectFullMesh failed ... Connection refused")."""
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def settings(train_cfg: dict) -> DistSettings:
    """The distributed keys of the `train` config section."""
    return DistSettings(**{k: train_cfg[k] for k in KEYS if k in train_cfg})


def should_launch(settings: DistSettings, batch_size: int, tasks=None) -> bool:
    """True when this process should start `settings.nproc` workers: more than one asked for
    and not already a worker (under torchrun the launcher decides and nproc is not read).
    `tasks`: the model's (multitask), refused before any worker starts."""
    if settings.nproc == 1 or under_launcher():
        return False
    if tasks:
        raise TwoTowerError(MULTITASK)
    if batch_size % settings.nproc:
        raise TwoTowerError(
            f"train.batch_size={batch_size} is not divisible by train.nproc={settings.nproc}:"
            " every rank takes an equal slice of each global batch"
        )
    return True


def set_threads(threads: int | None) -> None:
    """torch's threads in a worker: `threads`, or the machine's cores shared by the local
    workers (null), so N workers do not each spin up every core."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local))


def figures(group: Group, batch_size: int, history: list[dict]) -> dict:
    """What the train manifest records about the run's parallelism and speed (samples/s: the
    median over epochs of examples trained per second of training, validation excluded)."""
    rates = sorted(h["samples_per_s"] for h in history)
    return {
        "world_size": group.world_size,
        "backend": group.backend if group.active else "none",
        "global_batch": batch_size,
        "samples_per_s": round(rates[len(rates) // 2], 1) if rates else 0.0,
    }


def launch(settings: DistSettings, fn: Callable, *args) -> dict[int, object]:
    """Run `fn(*args)` in `settings.nproc` local workers (torch's elastic launcher, standalone
    rendezvous on localhost, no restarts); returns each rank's return value. A worker that
    fails ends the run: every worker is stopped and the first failure becomes one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent logs its launch config, and a failure as tracebacks of its own polling; the
    # failure becomes one line below
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing").setLevel(logging.ERROR)
    # the spawn start method's resource tracker (a child interpreter started with this one's
    # -W options) warns about the semaphores of a killed worker after the run has said so
    if TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_WARNING)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=settings.nproc,
        run_id=f"twotower-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        rdzv_configs={"timeout": int(settings.dist_timeout_s)},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        # workers left at the end get SIGTERM, then SIGKILL this much later (default 30 s):
        # they hold nothing to save (rank 0 writes once, at the end). (After a failure the
        # agent waits its fixed 30 s instead, which only a worker ignoring SIGTERM, e.g. a
        # SIGSTOPped one, makes it spend.)
        shutdown_timeout=2,
    )
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        msg = _message(failure)
        if "timed out" in msg.lower():
            msg += (
                f" (a peer stopped answering for train.dist_timeout_s={settings.dist_timeout_s:g})"
            )
        raise TwoTowerError(f"rank {rank} (pid {failure.pid}) failed: {msg}") from None


def _message(failure) -> str:
    """A failure's cause on one line: the worker's exception, or the signal that killed it."""
    msg = failure.message
    if isinstance(msg, dict):  # the error file's {"message": ..., "extraInfo": ...}
        msg = msg.get("message", "")
    lines = [line.strip() for line in str(msg).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else f"exit code {failure.exitcode}"
    text = text.removeprefix(f"{TwoTowerError.__name__}: ")  # the stage's own one-line errors
    if failure.exitcode < 0:
        text = f"killed by signal {-failure.exitcode} ({failure.signal_name()})"
    return text


# --- the training loop's hooks ------------------------------------------------------------


def check(batch_size: int, group: Group, model: torch.nn.Module) -> None:
    """What data-parallel training needs: equal slices of every global batch, one loss over
    the whole batch per step."""
    if not group.active:
        return
    if batch_size % group.world_size:
        raise TwoTowerError(
            f"train.batch_size={batch_size} is not divisible by the world size "
            f"{group.world_size} (train.nproc): every rank takes an equal slice"
        )
    if getattr(model, "tasks", ()):
        raise TwoTowerError(MULTITASK)


def batch_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """[start, stop) of each global batch over n shuffled examples. With several ranks the last
    partial batch is cut to a multiple of the world size (equal slices: gloo's all_gather
    needs equal sizes), so up to world_size - 1 examples of an epoch (a different random few
    each epoch) are skipped; with one rank nothing is."""
    bounds = []
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        e = s + (e - s) // world_size * world_size
        if e > s:
            bounds.append((s, e))
    return bounds


class _BatchLoss(torch.nn.Module):
    """The model's `batch_loss` as a forward pass, so DDP sees the step."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, sync=None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.sync = sync

    def forward(self, user_feats, item_feats, batch, neg_feats=None) -> torch.Tensor:
        if self.sync is None:
            return self.model.batch_loss(self.loss_fn, user_feats, item_feats, batch, neg_feats)
        self.sync.start()
        loss = self.model.batch_loss(self.loss_fn, user_feats, item_feats, batch, neg_feats)
        return self.sync.after_backward(loss)


def step_loss(model: torch.nn.Module, loss_fn: Callable, group: Group,
              negatives: str = "global") -> Callable:  # fmt: skip
    """`(user_feats, item_feats, batch, neg_feats) -> loss` of one rank's rows; under a group,
    the model wrapped in DistributedDataParallel (its gradients averaged over the ranks in
    backward; rank 0's initial weights broadcast to all) and the loss over the global batch's
    columns or the rank's own (`negatives`: train.dist_negatives, negatives.py).
    Sparse tables (train.sparse_embeddings, gloo) stay out of DDP: their gradients are averaged
    in one collective when backward ends (sparse_sync.py)."""
    if not group.active:
        return _BatchLoss(model, loss_fn)
    sync = SparseGradSync(model, group.world_size)
    step = _BatchLoss(model, rank_loss(loss_fn, group.rank, group.world_size, negatives), sync)
    DDP = torch.nn.parallel.DistributedDataParallel
    DDP._set_params_and_buffers_to_ignore_for_model(step, [f"model.{n}" for n in sync.names])
    sync.broadcast_weights()
    # buffers (embedding paddings, decay tables) never change in training: no per-step broadcast
    devices = [torch.cuda.current_device()] if group.backend == "nccl" else None
    return DDP(step, device_ids=devices, forward_sync_buffers=False)


def sparse_supported(group: Group) -> bool:
    """Whether sparse embedding gradients can be averaged over the group: gloo all-reduces
    sparse tensors (DDP hands them over as they are), NCCL cannot."""
    return group.backend != "nccl"


def from_main(value: float, group: Group) -> float:
    """Rank 0's value on every rank (the validation score, and with it the early-stop
    decision, which every rank then takes alike)."""
    if not group.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device(group))
    dist.broadcast(t, src=0)
    return float(t[0])


def total(value: float, group: Group) -> float:
    """The sum of `value` over the ranks."""
    if not group.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device(group))
    dist.all_reduce(t)
    return float(t[0])


def _device(group: Group) -> torch.device:
    """Where a collective's tensors live: NCCL takes CUDA tensors only."""
    if group.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()
