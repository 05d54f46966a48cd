"""`twotower tune`: the search-space syntax, its errors, a tiny search end to end (the top
trials confirmed with more seeds), the best overlay accepted by `twotower run`, and a killed
search resumed from its finished trials, the trial it cut off marked FAIL; a missing raw file
is the one-line error `run` gives."""

from __future__ import annotations

import warnings

import optuna
import pytest
from conftest import SMALL, twotower
from helpers import TUNE_SPACE, tune_conf
from omegaconf import OmegaConf

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.pipeline.study import search_space, study_lock, tpe
from twotower_cli.pipeline.tune import starting_point


def test_search_space_syntax_becomes_optuna_distributions():
    space = search_space(
        {"a": "choice(16, 32)", "b": "tag(log, interval(0.01, 0.3))", "c": "interval(0, 0.5)",
         "d": "range(1, 5)", "e": "choice(true, false)", "sampler": "choice(inbatch, mixed)"},
        "x.yaml",
    )  # fmt: skip
    D = optuna.distributions
    assert space["a"] == D.CategoricalDistribution([16, 32])
    assert space["b"] == D.FloatDistribution(0.01, 0.3, log=True)
    assert space["c"] == D.FloatDistribution(0.0, 0.5)
    assert space["d"] == D.IntDistribution(1, 4)  # range's stop is exclusive, as in Python
    assert space["e"] == D.CategoricalDistribution([True, False])
    assert space["sampler"] == D.CategoricalDistribution(["inbatch", "mixed"])


def test_the_starting_point_is_the_command_s_values_the_space_holds():
    space = search_space(
        {"model.temperature": "tag(log, interval(0.02, 0.3))", "model.embed_dim": "choice(32, 64)",
         "model.dropout": "interval(0.0, 0.3)", "model.history_decay": "choice(0, 2, 5)",
         "model.history": "choice(true, false)", "model.hidden": "choice(1, 2)",
         "train.lr": "interval(0.001, 0.01)", "sampler": "choice(inbatch, mixed)",
         "train.batch_size": "interval(64, 4096)"}, "x.yaml",
    )  # fmt: skip
    cfg = OmegaConf.create({"model": {"temperature": 0.124, "embed_dim": 16, "dropout": 0.5,
                                      "history_decay": 5.0, "history": False, "hidden": [256]},
                            "train": {"lr": 0.0026, "batch_size": "auto"}})  # fmt: skip
    point = starting_point(space, cfg, {"sampler": "mixed", "model": "dssm"})
    # embed_dim 16 and dropout 0.5 lie outside the space, a list is no choice, a text no
    # number: left to TPE
    assert point == {"model.temperature": 0.124, "model.history_decay": 5,
                     "model.history": False, "train.lr": 0.0026, "sampler": "mixed"}  # fmt: skip
    assert type(point["model.history_decay"]) is int  # the choice's own value, not 5.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model.dropout": 0.1}, "x.yaml: params.model.dropout: 0.1 is not a search range"),
        ({"train.lr": "interval(0.1, 0.01)"}, "x.yaml: params.train.lr: interval(0.1, 0.01)"),
        ({"train.lr": "tag(log, interval(0, 1))"}, "needs 0 < low < high"),
        ({"model.out_dim": "range(5, 5)"}, "x.yaml: params.model.out_dim: range(5, 5) is empty"),
        ({"model.out_dim": "choice(32,"}, "x.yaml: params.model.out_dim: "),
        ({}, "x.yaml: params is empty"),
    ],
)
def test_bad_search_space_entries_are_one_line_errors(params, message):
    with pytest.raises(TwoTowerError) as err:
        search_space(params, "x.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_search_space_naming_an_unknown_key_fails_before_any_trial(tmp_path, capsys):
    conf = tune_conf(tmp_path, "params:\n  model.tempreture: choice(0.1, 0.2)\n", "typo")
    out = tmp_path / "outputs"
    code = twotower("tune", "--config-dir", str(conf), "hparams_search=typo", *SMALL,
                    f"paths.out={out}")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("twotower tune: error: conf/hparams_search/typo.yaml: ")
    assert "model.tempreture" in err[0]
    assert not (out / "synthetic" / "tune").exists()


def test_unknown_sampler_argument_is_a_one_line_error(tmp_path, capsys):
    conf = tune_conf(
        tmp_path, "sampler: {seed: 0, n_startup: 3}\n" + TUNE_SPACE.split("\n", 2)[2], "bad"
    )
    out = tmp_path / "outputs"
    code = twotower("tune", "--config-dir", str(conf), "hparams_search=bad", *SMALL,
                    f"paths.out={out}")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["twotower tune: error: conf/hparams_search/bad.yaml: sampler: TPESampler."
                   "__init__() got an unexpected keyword argument 'n_startup'"]  # fmt: skip
    assert not (out / "synthetic" / "tune").exists()


def test_gamma_is_a_share_of_the_trials():
    # the best ceil(0.25 * n) trials are "good": 2 of 8, 4 of 16 (optuna's 0.1: 1 and 2)
    sampler = tpe({"seed": 0, "gamma": 0.25}, "x.yaml")
    assert [sampler._gamma(n) for n in (8, 16, 200)] == [2, 4, 25]
    for bad in (0, 1.5, "a", True):
        with pytest.raises(TwoTowerError, match=r"^x.yaml: sampler.gamma: .* not a share"):
            tpe({"gamma": bad}, "x.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [("tune.confirm_top=-1", "tune.confirm_top: -1 is not a count (an integer >= 0)"),
     ("tune.trials=-3", "tune.trials: -3 is not a count (an integer >= 0)"),
     # a type is the schema's (core/settings.py: TuneSettings), refused as Hydra composes
     ("tune.trials=many", "tune.trials: Value 'many' of type 'str' could not be converted to "
                          "Integer"),
     ("tune.refit=maybe", "tune.refit: Value 'maybe' is not a valid bool (type str)")],
)  # fmt: skip
def test_bad_tune_counts_are_one_line_errors(tmp_path, capsys, override, message):
    out = tmp_path / "outputs"
    assert twotower("tune", *SMALL, f"paths.out={out}", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"twotower tune: error: {message}"]
    assert not (out / "synthetic" / "tune").exists()


def test_a_second_tune_on_a_running_study_is_a_one_line_error(tmp_path, capsys):
    conf, out = tune_conf(tmp_path), tmp_path / "outputs"
    with study_lock(out / "synthetic" / "tune" / "tiny"):  # a live run holds the study
        code = twotower("tune", "--config-dir", str(conf), "hparams_search=tiny", *SMALL,
                        f"paths.out={out}")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another `twotower tune` is running this study" in err[0]


def test_a_torn_last_journal_line_is_dropped_and_the_study_resumes(tmp_path, capsys):
    from twotower_cli.pipeline.study import open_study

    def one_trial(study):
        study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature notes
        study = open_study(tmp_path, "s", {"seed": 0}, "test")
        one_trial(study)
        one_trial(study)
        journal = tmp_path / "study.journal"
        whole = journal.read_bytes()
        journal.write_bytes(whole[:-20])  # killed while appending trial 1's last record
        for _ in range(2):  # without the cut, the second open reads a joined line and fails
            study = open_study(tmp_path, "s", {"seed": 0}, "test")
            one_trial(study)
    assert "dropped a half-written last line (" in capsys.readouterr().out
    assert journal.read_bytes().endswith(b"\n")
    states = [t.state.name for t in study.trials]
    # trial 1 lost its finishing record: it reads RUNNING, the next open marks it FAIL
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
