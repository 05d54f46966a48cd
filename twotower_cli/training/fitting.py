"""The in-memory training of one configuration: what `twotower train` saves (stages.train) and
what each `twotower tune` trial scores on validation. `fit_on` picks the splits it learns
from: train, early-stopped on validation, or train + validation (a refit, no validation)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

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
from twotower_cli.training.examples import HistoryBatch, load_training_examples, with_history
from twotower_cli.training.resume import Resume
from twotower_cli.training.sequences import SequenceBatch
from twotower_cli.training.trainer import encode_all
from twotower_cli.training.trainer import train as train_model


@dataclass
class FitSettings:
    """What `fit` reads of a config, as plain values: the pipeline layer builds it from the
    composed config (stages.fit_settings)."""

    model: dict  # conf/model/<variant>.yaml resolved: its `_target_` and the tower's settings
    train: TrainSettings  # `optimizer` instantiated: a partial that takes the parameters
    sampler: dict  # the sampler's `_target_` node, instantiated for each fit
    loss: str  # the `loss` key: auto follows the sample's loss
    fit_on: str = "train"
    seed: int = 0
    index_factory: str = "Flat"  # the vectors must go into this index (checked before training)
    freshness_prior: float = 1.0  # eval.freshness_prior: validation ranks as evaluate does


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


def fit(cfg: FitSettings, prep_dir: Path, sample_dir: Path, group=None,
        resume: Resume | None = None, on_epoch=None) -> Fitted:  # fmt: skip
    """Train the configured model in memory: what `train` saves, and what each `tune` trial
    scores on validation."""
    group = group or distributed.current()
    torch.manual_seed(cfg.seed)
    schema, users, items = load_tables(prep_dir)
    key, args = checkpoint.model_args(dict(cfg.model))
    model = checkpoint.build(key, args, schema_dicts(schema))
    n_users, n_items = len(users["user"]) - 1, len(next(iter(items.values()))) - 1
    splits = FIT_ON[cfg.fit_on]  # train, or train + valid for a refit (no validation then)
    # the training positives: in memory only for the history feature (per-example histories);
    # else read in batches, for validation's masks and the cold items
    train_pos = (read_splits(prep_dir, splits, ["user", "item", "timestamp"])
                 if model.history_len else None)  # fmt: skip

    def train_batches(columns: list[str]):
        return [train_pos] if train_pos is not None else iter_splits(prep_dir, splits, columns)

    settings = cfg.train
    items = items_as_trained(items, prep_dir, settings.item_id_dropout, cfg.fit_on, n_items,
                             train_batches(["item"]))  # fmt: skip
    loss_fn, loss_name = losses.resolve(cfg.loss, read_manifest(sample_dir)["figures"]["loss"])
    # an index the vectors cannot go into fails now, not at `twotower index` after training
    empty_index(cfg.index_factory, encode_all(model, items, np.ones(1, np.int64), "item").shape[1])
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


def refit(cfg: FitSettings, first: Fitted, prep_dir: Path, sample_dir: Path, group=None,
          on_epoch=None) -> Fitted | None:  # fmt: skip
    """`train.refit`: the model trained again from scratch on train + validation for the epoch
    count early stopping picked (`first`'s best), with the batch `first` used, as EASE is
    refitted once validation has picked its lambda (docs/defaults.md). None where it does not
    apply: off, already fitted on train + validation, or explicit negatives (their sample
    holds the training rows only)."""
    key = f"valid_recall@{first.settings.early_stop_k}"
    scored = [h for h in first.history if key in h]
    if not cfg.train.refit or cfg.fit_on != "train" or not scored:
        return None
    if (sample_dir / FILES.negatives).exists():
        if group is None or group.is_main:
            print("train: train.refit skipped: the sampler's explicit negatives were drawn for "
                  "the training rows only (`twotower tune` refits with a sample of train + "
                  "validation)", flush=True)  # fmt: skip
        return None
    epochs = int(max(scored, key=lambda h: h[key])["epoch"])
    again = replace(cfg, fit_on="train+valid", train=replace(
        cfg.train, epochs=epochs, batch_size=first.settings.batch_size, min_steps_per_epoch=0,
        patience_min_steps=0, refit=False))  # fmt: skip
    if group is None or group.is_main:
        print(f"train: refit on train + validation for {epochs} epochs (the best on validation;"
              " train.refit)", flush=True)  # fmt: skip
    return fit(again, prep_dir, sample_dir, group, None, on_epoch)


def items_as_trained(items: dict, prep_dir: Path, item_id_dropout: float, fit_on: str,
                     n_items: int, batches=None) -> dict:  # fmt: skip
    """The item table as the model trained on it (fit, and `embed` from the checkpoint's
    config): under train.item_id_dropout > 0, the items with no positive in the `fit_on` splits
    get the unknown id (pools.unknown_cold_ids), since the tower learnt to rank such items from
    content alone. `batches`: those splits' item column, when the caller holds it already."""
    if item_id_dropout <= 0:
        return items
    batches = batches if batches is not None else iter_splits(prep_dir, FIT_ON[fit_on], ["item"])
    return pools.unknown_cold_ids(items, pools.item_counts(batches, n_items))


def figures(first: Fitted, again: Fitted | None, fit_on: str) -> dict:
    """The train stage's figures: the loss, epochs and best validation score of `first` (its
    popularity baseline, with a one-line warning when the model stayed below it) and the
    refit's epochs (`again`, or None)."""
    key = f"valid_recall@{first.settings.early_stop_k}"
    scores = [h[key] for h in first.history if key in h]  # none when fitted on train + valid
    out = {"loss": first.loss_name, "epochs": len(first.history)}
    if not scores:
        out["fit_on"] = fit_on
    else:
        out |= {"best_valid": max(scores), "popularity_valid": first.popularity_valid}
        if max(scores) < first.popularity_valid:
            print(f"train: warning: validation recall@{first.settings.early_stop_k} "
                  f"{max(scores):.4f} stayed below popularity's {first.popularity_valid:.4f}; "
                  "try twotower tune or docs/defaults.md", file=sys.stderr)  # fmt: skip
    if again is not None:
        out |= {"refit_epochs": len(again.history), "fit_on": "train+valid"}
    model = (again or first).model
    return out | {"parameters": sum(p.numel() for p in model.parameters())}


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
    sampler = instantiate(cfg.sampler)
    item_log_q = np.load(sample_dir / FILES.item_log_q)
    # a refit from a sample of the training rows (train.refit): the validation positives join
    # the examples, and an exact logQ counts them too
    extra = None
    if "valid" in splits and read_manifest(sample_dir)["config"].get("fit_on") == "train":
        extra = read_split(prep_dir, "valid", ["user", "item"]).assign(label=np.float32(1.0))
        if sampler.logq == "exact":
            counts = pools.item_counts(iter_splits(prep_dir, splits, ["item"]), n_items)
            item_log_q = losses.log_frequency(counts)
    batch_fn = sampler.batch_fn(torch.from_numpy(item_log_q), cfg.seed)
    if getattr(model, "sequential", False):
        sequences.check_sequence_training(model, (sample_dir / FILES.negatives).exists(),
                                          tuple(model.tasks), settings.nproc)  # fmt: skip
        examples = sequences.sequence_examples(train_pos, n_users, model.history_len,
                                               settings.sequence_windows)  # fmt: skip
        return {c: torch.from_numpy(v) for c, v in examples.items()}, SequenceBatch(batch_fn)
    examples, timeline = load_training_examples(
        prep_dir, sample_dir, train_pos, n_users, n_items, tuple(model.tasks),
        model.history_len, cfg.seed, settings.history_mode, splits, extra)  # fmt: skip
    if timeline is not None:  # each batch's histories read off the timeline (examples.py)
        batch_fn = HistoryBatch(timeline, model.history_len, batch_fn)
    return examples, batch_fn


def _valid_set(cfg: FitSettings, prep_dir: Path, settings: TrainSettings, train_batches,
               n_items: int) -> EvalSet:  # fmt: skip
    """Early stopping's validation users (all, or a seeded `train.valid_max_users` sample),
    their positives and the training items masked for them."""
    held = read_split(prep_dir, "valid", ["user", "item"])
    some = sample_users(sorted_unique(held["user"].to_numpy()), settings.valid_max_users, cfg.seed)
    valid = EvalSet.build(held, train_batches(["user", "item"]), n_items, some)
    valid.pool, valid.item_log_prior = pools.valid_pool(prep_dir, cfg.freshness_prior)
    return valid
