"""Section `train` of the benchmark (`python -m bench.run --sections train`): twotower's trainer
against the per-row Dataset / DataLoader loop of bench/reference.py, and how near its step runs
to torch.mm's speed on the same matrix products (bench/flops.py)."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench import flops, log, reference
from bench.data import Data
from bench.sizes import Sizes
from bench.timer import Rounds, alternate, median
from twotower_cli.retrieval.search import EvalSet
from twotower_cli.samplers import InBatchSampler
from twotower_cli.training import losses
from twotower_cli.training.trainer import TrainSettings, gather, optimizers, train, user_features


def section(data: Data, sizes: Sizes, device: str = "cpu") -> dict:
    """Samples/s of trainer.train against reference.reference_train: same model init, loss,
    optimisers, batch size and steps. The sides alternate in `train_rounds` rounds of
    `train_steps` steps each (fresh positives every round), so both see the same machine load;
    twotower's time includes its end-of-epoch validation (200 users) and set-up every round.

    Each round also times the reference's DataLoader alone (same rows, no model): reference
    time minus that is its model step, which twotower shares, so `train_speedup_ceiling` =
    reference / (reference - loader) estimates the ratio a trainer whose data path and
    validation cost nothing would reach (separately timed parts: an estimate, not a bound)."""
    per_round, steps = sizes.train_steps * sizes.batch_size, sizes.train_steps
    examples, datasets, valid_set = round_inputs(data, sizes)
    # no weight decay: the plain DSSM and Adam the bench has always timed (docs/bench.md)
    settings = TrainSettings(epochs=1, batch_size=sizes.batch_size, patience=1, device=device,
                             sparse_embeddings=sizes.sparse_embeddings,
                             weight_decay=0.0)  # fmt: skip
    models = {"twotower": data.model, "reference": copy.deepcopy(data.model)}
    first = examples[0]
    replay = flops.GemmReplay(step_gemms(data, first["user"][: sizes.batch_size].numpy(),
                                         first["item"][: sizes.batch_size].numpy()))  # fmt: skip
    step_s, gemm_s, loader_s = [], [], []  # the trainer's loop (no validation), replay, loader

    def after(side: str, r: int, so_far: Rounds) -> None:
        if side == "twotower":  # the replay runs right after our loop, untimed by it
            step_s.append(per_round / so_far.results[side][-1][0]["samples_per_s"])
            gemm_s.append(replay.run(steps))
        for table in models[side].modules():  # what trainer.train does on its way out
            if isinstance(table, torch.nn.Embedding):
                table.sparse = False

    def round_end(r: int, so_far: Rounds) -> None:
        loader_s.append(loader_seconds(datasets[r], sizes.batch_size, steps))
        s = so_far.seconds
        log(f"train: round {r + 1}/{sizes.train_rounds}: twotower "
            f"{per_round / s['twotower'][-1]:.0f} samples/s, reference "
            f"{per_round / s['reference'][-1]:.0f}")  # fmt: skip

    rounds = alternate(sizes.train_rounds, {
        "reference": lambda r: reference.reference_train(
            models["reference"], losses.inbatch_softmax, datasets[r], sizes.batch_size, steps,
            lambda m: optimizers(m, settings), data.log_q, r, device),
        "twotower": lambda r: train(
            models["twotower"], losses.inbatch_softmax, examples[r], data.users, data.items,
            valid_set, data.n_items, settings, InBatchSampler().batch_fn(data.log_q)),
    }, after=after, round_end=round_end)  # fmt: skip
    ours, theirs = np.array(rounds.seconds["twotower"]), np.array(rounds.seconds["reference"])
    loader = np.array(loader_s)
    ms = lambda t: median(t) / steps * 1e3  # noqa: E731
    return {"train_samples_per_s": per_round / median(ours),
            "train_ms_per_batch": ms(ours), "train_reference_ms_per_batch": ms(theirs),
            "train_reference_loader_ms_per_batch": ms(loader),
            "train_speedup_ceiling": median(theirs / np.maximum(theirs - loader, 1e-9)),
            "train_reference_samples_per_s": per_round / median(theirs),
            "train_speedup": median(theirs / ours),
            "train_speedup_total": float(theirs.sum() / ours.sum()),
            "train_rounds": sizes.train_rounds, "train_steps_per_round": steps,
            "train_batch_size": sizes.batch_size,
            "train_sparse_embeddings": sizes.sparse_embeddings,
            **gemm_fraction(replay, steps, step_s, gemm_s)}  # fmt: skip


def round_inputs(data: Data, sizes: Sizes) -> tuple[list[dict], list, EvalSet]:
    """Each round's fresh positives, as the trainer's examples and as the reference's
    RowDataset (train_steps batches a round, drawn without replacement), and the 200
    validation users the trainer scores at the end of each round's epoch."""
    per_round = sizes.train_steps * sizes.batch_size
    rng = np.random.default_rng(0)
    train_pos = data.parts["train"]
    pos = train_pos.iloc[rng.choice(len(train_pos), per_round * sizes.train_rounds,
                                    replace=False)]  # fmt: skip
    users, items = pos["user"].to_numpy(copy=True), pos["item"].to_numpy(copy=True)
    valid = data.parts["valid"]
    some = np.sort(valid["user"].unique())[:200]
    valid_set = EvalSet.build(valid[valid["user"].isin(some)], train_pos, data.n_items)
    parts = [slice(r * per_round, (r + 1) * per_round) for r in range(sizes.train_rounds)]
    examples = [{"user": torch.from_numpy(users[p]), "item": torch.from_numpy(items[p]),
                 "label": torch.ones(per_round)} for p in parts]  # fmt: skip
    datasets = [reference.RowDataset(users[p], items[p], data.users, data.items) for p in parts]
    return examples, datasets, valid_set


def loader_seconds(dataset: reference.RowDataset, batch_size: int, steps: int) -> float:
    """Seconds for the reference's DataLoader alone to deliver `steps` batches (no model)."""
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    for step, _ in enumerate(loader):
        if step + 1 == steps:
            break
    return time.perf_counter() - start


def step_gemms(data: Data, users: np.ndarray, items: np.ndarray) -> list[tuple[int, int, int]]:
    """The matrix products of one training step (forward + backward, in-batch softmax with
    logQ) of a copy of the bench model on these positives."""
    model = copy.deepcopy(data.model)
    model.train()
    batch = InBatchSampler().batch_fn(data.log_q)(
        {"user": torch.from_numpy(users), "item": torch.from_numpy(items),
         "label": torch.ones(len(users))})  # fmt: skip

    def step():
        loss = model.batch_loss(losses.inbatch_softmax, user_features(data.users, batch),
                                gather(data.items, batch["item"]), batch, None)  # fmt: skip
        loss.backward()

    return flops.record_gemms(step)


def gemm_fraction(replay: flops.GemmReplay, steps: int, step_s: list, gemm_s: list) -> dict:
    """train_gemm_fraction: the step's model FLOPs per second (the trainer's loop time) over
    torch.mm's on the same shapes, timed right after it each round; median of the rounds."""
    step_s, gemm_s = np.array(step_s), np.array(gemm_s)
    return {"train_gemm_fraction": median(gemm_s / step_s),
            "train_step_gflop": replay.flops / 1e9, "train_step_gemms": len(replay.ops),
            "train_gflops": replay.flops * steps / median(step_s) / 1e9,
            "train_mm_gflops": replay.flops * steps / median(gemm_s) / 1e9}  # fmt: skip
