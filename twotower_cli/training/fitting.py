"""The in-memory training of one configuration: what `twotower train` saves (stages.train) and
what each `twotower tune` trial scores on validation. `fit_on` picks the splits it learns
from: train, early-stopped on validation, or train + validation (a refit, no validation)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts import checkpoint
from twotower_cli.artifacts.store import (
    FIT_ON,
    iter_splits,
    read_manifest,
    read_split,
    read_splits,
)
from twotower_cli.core.keys import sorted_unique
from twotower_cli.core.layout import FILES
from twotower_cli.core.settings import TrainSettings
from twotower_cli.data.tables import schema_dicts
from twotower_cli.models.inputs import load_tables
from twotower_cli.retrieval import pools
from twotower_cli.retrieval.metrics import ranking_metrics
from twotower_cli.retrieval.search import EvalSet, empty_index, sample_users
from twotower_cli.training import distributed, losses, sequences
from twotower_cli.training.examples import load_training_examples, with_history
from twotower_cli.training.resume import Resume
from twotower_cli.training.sequences import SequenceBatch
from twotower_cli.training.trainer import encode_all
from twotower_cli.training.trainer import train as train_model


@dataclass
class Fitted:
    """A model trained in memory (`fit`) and what saving it needs."""

    model: object
    history: list[dict]
    settings: TrainSettings
    loss_name: str
    key: str
    args: dict
    schema: dict
    users: dict
    items: dict
    # validation Recall@early_stop_k of the most-popular list on the same users, masks and
    # pool (None in a refit: no validation); `train` warns when the model stays below it
    popularity_valid: float | None = None


def fit(cfg: DictConfig, prep_dir: Path, sample_dir: Path, group=None,
        resume: Resume | None = None, on_epoch=None) -> Fitted:  # fmt: skip
    """Train the configured model in memory: what `train` saves, and what each `tune` trial
    scores on validation."""
    group = group or distributed.current()
    torch.manual_seed(cfg.seed)
    schema, users, items = load_tables(prep_dir)
    key, args = checkpoint.model_args(OmegaConf.to_container(cfg.model, resolve=True))
    model = checkpoint.build(key, args, schema_dicts(schema))
    n_users, n_items = len(users["user"]) - 1, len(next(iter(items.values()))) - 1
    splits = FIT_ON[cfg.fit_on]  # train, or train + valid for a refit (no validation then)
    # the training positives: in memory only for the history feature (per-example histories);
    # else read in batches, for validation's masks and the cold items
    train_pos = (read_splits(prep_dir, splits, ["user", "item", "timestamp"])
                 if model.history_len else None)  # fmt: skip

    def train_batches(columns: list[str]):
        return [train_pos] if train_pos is not None else iter_splits(prep_dir, splits, columns)

    if cfg.train.item_id_dropout > 0:  # items with no training positive: unknown ids
        items = pools.unknown_cold_ids(items, pools.item_counts(train_batches(["item"]), n_items))
    loss_fn, loss_name = losses.resolve(cfg.loss, read_manifest(sample_dir)["figures"]["loss"])
    # an index the vectors cannot go into fails now, not at `twotower index` after training
    empty_index(cfg.index.factory, encode_all(model, items, np.ones(1, np.int64), "item").shape[1])
    settings = TrainSettings(**{**cfg.train, "optimizer": instantiate(cfg.train.optimizer)})
    examples, batch_fn = _examples(cfg, model, settings, prep_dir, sample_dir, train_pos,
                                   n_users, n_items, splits)  # fmt: skip
    if not getattr(model, "sequential", False):  # a sequence batch holds whole users' windows
        settings = adapt_to_log(settings, len(examples["item"]), group.is_main)
    users = with_history(users, train_pos, model.history_len)
    valid = None if "valid" in splits else _valid_set(cfg, prep_dir, settings, train_batches,
                                                       n_items)  # fmt: skip
    pop = (
        None
        if valid is None
        else popularity_valid(
            valid,
            pools.item_counts(train_batches(["item"]), n_items),
            settings.early_stop_k,
            n_items,
        )
    )
    train_pos = None  # the training loop holds only the examples' columns
    if group.is_main and settings.sparse_embeddings and not distributed.sparse_supported(group):
        print("train: train.sparse_embeddings is off under nccl (no sparse all-reduce): dense "
              "gradients, all-reduced (docs/scale.md)", flush=True)  # fmt: skip
    history = train_model(model, loss_fn, examples, users, items, valid, n_items, settings,
                          batch_fn, seed=cfg.seed, resume=resume, on_epoch=on_epoch)  # fmt: skip
    return Fitted(model, history, settings, loss_name, key, args, schema_dicts(schema), users,
                  items, pop)  # fmt: skip


def adapt_to_log(settings: TrainSettings, n_examples: int, say: bool = True) -> TrainSettings:
    """The batch and patience for a log of `n_examples` training rows: `batch_size` halved
    (not below 32) while an epoch has fewer than `min_steps_per_epoch` steps, `patience` raised
    to at least ceil(patience_min_steps / steps per epoch) epochs (docs/defaults.md)."""
    batch = settings.batch_size
    while settings.min_steps_per_epoch and batch > 32 and (
            n_examples / batch < settings.min_steps_per_epoch):  # fmt: skip
        batch //= 2
    steps = max(1, -(-n_examples // batch))
    patience = settings.patience
    if settings.patience_min_steps:
        patience = max(patience, -(-settings.patience_min_steps // steps))
    if say and (batch, patience) != (settings.batch_size, settings.patience):
        print(f"train: {n_examples} training rows: batch {settings.batch_size} -> {batch}, "
              f"patience {settings.patience} -> {patience} ({steps} steps an epoch; "
              "train.min_steps_per_epoch, train.patience_min_steps)", flush=True)  # fmt: skip
    return replace(settings, batch_size=batch, patience=patience)


def popularity_valid(valid: EvalSet, counts: np.ndarray, k: int, n_items: int) -> float:
    """Validation Recall@k of the most-popular list (`counts`: training rows per item id),
    ranked over the validation pool with the training items masked, as the model is."""
    top = pools.baseline_tops(counts, None, valid, k, n_items, valid.pool, None, 24.0)
    return ranking_metrics(top["popularity"], valid.truth, valid.n_truth, [k], n_items)[
        f"recall@{k}"
    ]


def _examples(cfg, model, settings: TrainSettings, prep_dir: Path, sample_dir: Path,
              train_pos, n_users: int, n_items: int, splits: tuple):  # fmt: skip
    """The examples training iterates over and the sampler's per-batch step: the sampler's
    examples (with task labels and histories as the model reads them), or for a sequence
    encoder one next-item sequence per user (sequences.py)."""
    batch_fn = instantiate(cfg.sampler).batch_fn(
        torch.from_numpy(np.load(sample_dir / FILES.item_log_q)), cfg.seed)  # fmt: skip
    if getattr(model, "sequential", False):
        sequences.check_sequence_training(model, (sample_dir / FILES.negatives).exists(),
                                          tuple(model.tasks), settings.nproc)  # fmt: skip
        examples = sequences.sequence_examples(train_pos, n_users, model.history_len,
                                               settings.sequence_windows)  # fmt: skip
        return {c: torch.from_numpy(v) for c, v in examples.items()}, SequenceBatch(batch_fn)
    examples = load_training_examples(prep_dir, sample_dir, train_pos, n_users, n_items,
                                      tuple(model.tasks), model.history_len, cfg.seed,
                                      settings.history_mode, splits)  # fmt: skip
    return examples, batch_fn


def _valid_set(cfg: DictConfig, prep_dir: Path, settings: TrainSettings, train_batches,
               n_items: int) -> EvalSet:  # fmt: skip
    """Early stopping's validation users (all, or a seeded `train.valid_max_users` sample),
    their positives and the training items masked for them."""
    held = read_split(prep_dir, "valid", ["user", "item"])
    some = sample_users(sorted_unique(held["user"].to_numpy()), settings.valid_max_users, cfg.seed)
    valid = EvalSet.build(held, train_batches(["user", "item"]), n_items, some)
    valid.pool, valid.item_log_prior = pools.valid_pool(prep_dir, cfg.eval.freshness_prior)
    return valid
