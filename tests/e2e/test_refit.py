"""`fit_on=train+valid`: the refit of a configuration picked on validation. Its sample holds
the training and validation positives (in a dir of its own), training runs every epoch with no
validation and keeps the last one's weights, and a bad value is a one-line error."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from conftest import SMALL, read_json, twotower

from twotower_cli.artifacts.store import read_splits
from twotower_cli.training import fitting, trainer
from twotower_cli.training.examples import load_training_examples

REFIT = "fit_on=train+valid"


@pytest.mark.parametrize("sampler", ["inbatch", "random"])
def test_a_refit_sample_holds_the_train_and_valid_positives(out_dir, sampler):
    paths = f"paths.out={out_dir}"
    assert twotower("preprocess", *SMALL, paths) == 0
    assert twotower("sample", *SMALL, paths, f"sampler={sampler}") == 0
    assert twotower("sample", *SMALL, paths, f"sampler={sampler}", REFIT) == 0
    prep, samples = out_dir / "synthetic" / "preprocess", out_dir / "synthetic" / "sample"
    train, valid = (pd.read_parquet(prep / f"{s}.parquet") for s in ("train", "valid"))
    alone = pd.read_parquet(samples / sampler / "examples.parquet")
    refit = pd.read_parquet(samples / f"{sampler}+valid" / "examples.parquet")
    # the train-only sample is left as it was, beside the refit's
    assert (alone["label"] > 0).sum() == len(train)
    assert (refit["label"] > 0).sum() == len(train) + len(valid)
    pairs = set(zip(refit.loc[refit["label"] > 0, "user"], refit.loc[refit["label"] > 0, "item"],
                    strict=True))  # fmt: skip
    assert set(zip(valid["user"], valid["item"], strict=True)) <= pairs
    assert read_json(samples / f"{sampler}+valid" / "manifest.json")["config"]["fit_on"] == (
        "train+valid"
    )


def test_a_refit_trains_every_epoch_unvalidated_and_keeps_the_last(out_dir, monkeypatch):
    paths = f"paths.out={out_dir}"
    snapshots = []
    fit_model = fitting.train_model

    def recording(model, *args, on_epoch=None, **kwargs):
        def after_epoch(record):
            snapshots.append(copy.deepcopy(model.state_dict()))
            on_epoch(record)

        return fit_model(model, *args, on_epoch=after_epoch, **kwargs)

    def no_validation(*args, **kwargs):
        raise AssertionError("a refit validated")

    monkeypatch.setattr(fitting, "train_model", recording)
    monkeypatch.setattr(trainer, "validate", no_validation)
    # patience 1 would stop a validated run early; a refit runs all 4 epochs
    assert twotower("run", *SMALL, paths, REFIT, "train.epochs=4", "train.patience=1") == 0
    run = out_dir / "synthetic" / "sample" / "inbatch+valid" / "dssm"
    history = read_json(run / "train" / "history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert not any(k.startswith("valid_") for h in history for k in h)
    figures = read_json(run / "train" / "manifest.json")["figures"]
    assert figures["fit_on"] == "train+valid" and "best_valid" not in figures
    saved = torch.load(run / "train" / "model.pt", weights_only=True)["state_dict"]
    assert len(snapshots) == 4
    for name, value in snapshots[-1].items():
        assert torch.equal(saved[name], value), name
    assert not all(torch.equal(saved[n], v) for n, v in snapshots[0].items())
    assert 0.0 < read_json(run / "evaluate" / "metrics.json")["model"]["recall@20"] <= 1.0
    # the report draws a refit's loss curve and no validation curve
    monkeypatch.undo()
    assert twotower("report", *SMALL, paths, REFIT) == 0
    assert (run / "report" / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_a_multitask_refit_reads_the_task_rows_of_both_splits(out_dir):
    args = [*SMALL, f"paths.out={out_dir}", "model=multitask", "+dataset.tasks=[click]", REFIT]
    assert twotower("run", *args, "train.epochs=1") == 0
    prep = out_dir / "synthetic" / "preprocess"
    sample = out_dir / "synthetic" / "sample" / "inbatch+valid"
    valid = pd.read_parquet(prep / "valid.parquet")
    positives = read_splits(prep, ("train", "valid"), ["user", "item", "timestamp"])
    n_users, n_items = int(positives["user"].max()), int(positives["item"].max())

    def click_labels_of_valid_pairs(splits):
        cols, _ = load_training_examples(prep, sample, positives, n_users, n_items, ("click",),
                                         0, 0, "causal", splits)  # fmt: skip
        ex = pd.DataFrame({k: cols[k].numpy() for k in ("user", "item", "task.click")})
        return ex.merge(valid[["user", "item"]].drop_duplicates())["task.click"]

    # the valid positives' task labels come from tasks_valid: all 0 if only tasks_train is read
    assert (click_labels_of_valid_pairs(("train", "valid")) > 0).all()
    assert (click_labels_of_valid_pairs(("train",)) == 0).all()


def test_a_bad_fit_on_is_a_one_line_error(out_dir, capsys):
    assert twotower("train", *SMALL, f"paths.out={out_dir}", "fit_on=everything") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["twotower train: error: fit_on: 'everything' not in ('train', 'train+valid')"]


def test_tune_searches_on_train_only(out_dir, capsys):
    assert twotower("tune", *SMALL, f"paths.out={out_dir}", REFIT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit_on=train+valid: tune's trials are scored on validation" in err[0]
    assert not (out_dir / "synthetic" / "tune").exists()


def test_a_bad_tune_refit_is_a_one_line_error(out_dir, capsys):
    assert twotower("tune", *SMALL, f"paths.out={out_dir}", "tune.refit=sometimes") == 2
    err = capsys.readouterr().err.strip().splitlines()
    # a type is the schema's (core/settings.py: TuneSettings), refused as Hydra composes
    assert err == ["twotower tune: error: tune.refit: Value 'sometimes' is not a valid bool "
                   "(type str)"]  # fmt: skip


@pytest.mark.slow
def test_train_refit_equals_training_on_train_and_valid_for_the_best_epoch_count(out_dir):
    # train.refit (the default): early stopping picks E epochs on validation, then the model
    # is trained from scratch on train + valid for E epochs with the same batch; it equals the
    # model `fit_on=train+valid train.epochs=E` trains with that batch and the same seed
    paths = f"paths.out={out_dir}"
    assert twotower("run", *SMALL, paths, "train.patience=1") == 0
    runs = out_dir / "synthetic" / "sample"
    made = read_json(runs / "inbatch" / "dssm" / "train" / "manifest.json")
    history = read_json(runs / "inbatch" / "dssm" / "train" / "history.json")
    best = max(history, key=lambda h: h["valid_recall@20"])["epoch"]
    assert made["figures"]["refit_epochs"] == best and made["figures"]["fit_on"] == "train+valid"
    assert made["figures"]["best_valid"] == max(h["valid_recall@20"] for h in history)
    by_hand = (
        "train.refit=false",
        "train.min_steps_per_epoch=0",
        "train.patience_min_steps=0",
        f"train.batch_size={made['figures']['global_batch']}",
        f"train.epochs={best}",
    )
    assert twotower("run", *SMALL, paths, REFIT, *by_hand) == 0
    ours, theirs = (torch.load(runs / s / "dssm" / "train" / "model.pt", weights_only=True)
                    for s in ("inbatch", "inbatch+valid"))  # fmt: skip
    assert ours["config"]["fit_on"] == "train+valid"
    for name, value in theirs["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][name], value, rtol=0, atol=1e-6)


def test_train_refit_is_skipped_with_explicit_negatives(out_dir, capsys):
    paths = f"paths.out={out_dir}"
    assert twotower("run", *SMALL, paths, "sampler=random", "train.epochs=2") == 0
    assert (
        "train: train.refit skipped: the sampler's explicit negatives" in capsys.readouterr().out
    )
    made = read_json(out_dir / "synthetic" / "sample" / "random" / "dssm" / "train" /
                     "manifest.json")  # fmt: skip
    assert "refit_epochs" not in made["figures"] and "best_valid" in made["figures"]
    assert torch.load(out_dir / "synthetic" / "sample" / "random" / "dssm" / "train" /
                      "model.pt", weights_only=True)["config"]["fit_on"] == "train"  # fmt: skip
