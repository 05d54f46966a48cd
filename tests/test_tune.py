"""`twotower tune`: the search-space syntax, its errors, a tiny search end to end (the top
trials confirmed with more seeds), the best overlay accepted by `twotower run`, and a killed
search resumed from its finished trials, the trial it cut off marked FAIL; a missing raw file
is the one-line error `run` gives."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import SMALL, read_json, twotower

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.pipeline.study import search_space, study_lock, tpe
from twotower_cli.training import fitting

TINY = """
sampler: {seed: 0, n_startup_trials: 2}
params:
  model.temperature: choice(0.05, 0.1, 0.2)
  train.lr: tag(log, interval(0.001, 0.01))
"""


def _conf(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    conf = tmp_path / "conf"
    (conf / "hparams_search").mkdir(parents=True, exist_ok=True)
    (conf / "hparams_search" / f"{name}.yaml").write_text(text)
    return conf


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
    conf = _conf(tmp_path, "params:\n  model.tempreture: choice(0.1, 0.2)\n", "typo")
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
    conf = _conf(tmp_path, "sampler: {seed: 0, n_startup: 3}\n" + TINY.split("\n", 2)[2], "bad")
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
    conf, out = _conf(tmp_path), tmp_path / "outputs"
    with study_lock(out / "synthetic" / "tune" / "tiny"):  # a live run holds the study
        code = twotower("tune", "--config-dir", str(conf), "hparams_search=tiny", *SMALL,
                        f"paths.out={out}")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another `twotower tune` is running this study" in err[0]


@pytest.mark.slow
def test_tiny_search_writes_its_artifacts_and_the_overlay_runs(tmp_path, capsys):
    conf, out = _conf(tmp_path), tmp_path / "outputs"
    args = ["--config-dir", str(conf), "hparams_search=tiny", *SMALL, f"paths.out={out}"]
    assert twotower("tune", *args, "tune.trials=3") == 0
    tune_dir = out / "synthetic" / "tune" / "tiny"
    frame = pd.read_csv(tune_dir / "trials.csv")
    assert list(frame["trial"]) == [0, 1, 2]
    assert set(frame["state"]) == {"COMPLETE"}
    assert frame["valid_recall@20"].between(0.05, 1.0).all()
    assert {"model.temperature", "train.lr", "seconds", "epochs"} <= set(frame.columns)
    for png in ("scores.png", "params.png"):
        assert (tune_dir / png).read_bytes()[:4] == b"\x89PNG"
    metrics = read_json(tune_dir / "metrics.json")
    # all 3 trials are in the top 3: each trained again with seeds 1 and 2, the best mean wins
    confirmed = metrics["confirmed"]
    assert sorted(confirmed) == ["0", "1", "2"]
    for n, c in confirmed.items():
        assert list(c["seeds"]) == ["0", "1", "2"]
        assert c["seeds"]["0"] == frame.loc[int(n), "valid_recall@20"]  # the trial itself
        assert c["mean"] == pytest.approx(sum(c["seeds"].values()) / 3)
        assert frame.loc[int(n), "valid_recall@20_mean"] == pytest.approx(c["mean"])
    best = frame.loc[frame["valid_recall@20_mean"].idxmax()]
    assert metrics["best_trial"] == best["trial"]
    assert metrics["params"]["model.temperature"] == best["model.temperature"]
    # the retrained best is refitted on train + valid for its validation runs' mean best epoch
    epochs = confirmed[str(metrics["best_trial"])]["best_epochs"]
    assert list(epochs) == ["0", "1", "2"] and all(1 <= e <= 3 for e in epochs.values())
    refit = {"fit_on": "train+valid", "train.epochs": round(sum(epochs.values()) / 3)}
    assert metrics["refit"] == refit
    printed = capsys.readouterr().out
    assert f"retraining trial {metrics['best_trial']} on train + valid" in printed
    run_root = out / "synthetic" / "sample" / "inbatch+valid" / "tuned-tiny-s0"
    history = read_json(run_root / "train" / "history.json")
    assert len(history) == refit["train.epochs"] and "valid_recall@20" not in history[0]
    # ... and evaluated on test, beside the baselines
    evaluated = read_json(run_root / "evaluate" / "metrics.json")
    assert metrics["test_model"]["recall@20"]["seeds"] == [evaluated["model"]["recall@20"]]
    assert {"popularity", "ease"} <= set(metrics["baselines"])
    assert "test recall@20 seeds [0]" in printed
    # best.yaml is an experiment overlay: `twotower run experiment=...` trains that config
    (conf / "experiment").mkdir()
    (conf / "experiment" / "tuned.yaml").write_text((tune_dir / "best.yaml").read_text())
    assert twotower("run", "--config-dir", str(conf), "experiment=tuned",
                    f"paths.out={out}", "paths.run=again") == 0  # fmt: skip
    ran = read_json(run_root.parent / "again" / "train" / "manifest.json")["config"]
    assert ran["model"]["temperature"] == best["model.temperature"]
    assert ran["train"]["lr"] == pytest.approx(best["train.lr"])
    assert ran["fit_on"] == "train+valid" and ran["train"]["epochs"] == refit["train.epochs"]
    assert ran["dataset"]["load"]["n_users"] == 300
    # tune.refit=false: the trial's own training (on train, early-stopped on validation)
    assert twotower("tune", *args, "tune.trials=3", "tune.refit=false") == 0
    assert read_json(tune_dir / "metrics.json")["refit"] == {"train.refit": False}
    alone = read_json(out / "synthetic" / "sample" / "inbatch" / "tuned-tiny-s0" / "train"
                      / "manifest.json")  # fmt: skip
    assert alone["config"]["train"]["refit"] is False and "refit_epochs" not in alone["figures"]
    assert alone["figures"]["best_valid"] == pytest.approx(
        metrics["confirmed"][str(metrics["best_trial"])]["seeds"]["0"]
    )


@pytest.mark.slow
def test_a_minutes_budget_stops_the_search_and_still_refits_the_best(tmp_path, capsys):
    # 0.001 minutes (60 ms) is spent by the first trial: optuna starts no second one, there is
    # nothing to confirm, and the one trial is refitted and evaluated
    conf, out = _conf(tmp_path), tmp_path / "outputs"
    args = ["--config-dir", str(conf), "hparams_search=tiny", *SMALL, f"paths.out={out}"]
    assert twotower("tune", *args, "tune.trials=5", "tune.minutes=0.001") == 0
    printed = capsys.readouterr().out
    assert "tune: tune.minutes=0.001 spent after 1 of 5 trials" in printed
    metrics = read_json(out / "synthetic" / "tune" / "tiny" / "metrics.json")
    assert metrics["trials"] == 1 and metrics["best_trial"] == 0 and metrics["confirmed"] == {}
    assert len(metrics["test_model"]["recall@20"]["seeds"]) == 1
    assert twotower("tune", *args, "tune.minutes=0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["twotower tune: error: tune.minutes: 0 is not null or a number of minutes > 0"]


class Killed(BaseException):
    """SIGKILL in the middle of a trial: nothing in the process gets to clean up (optuna
    catches Exception and KeyboardInterrupt, which it marks FAIL itself)."""


@pytest.mark.slow
def test_a_killed_search_resumes_from_its_finished_trials(tmp_path, monkeypatch, capsys):
    conf, out = _conf(tmp_path), tmp_path / "outputs"
    args = ["tune", "--config-dir", str(conf), "hparams_search=tiny", *SMALL, f"paths.out={out}",
            "tune.trials=3", "tune.confirm_top=1"]  # fmt: skip
    fit, calls = fitting.fit, []

    def killed_at_third(cfg, *args, **kwargs):
        calls.append(cfg.model["temperature"])
        if len(calls) == 3:
            raise Killed  # the process dies in the middle of trial 2
        return fit(cfg, *args, **kwargs)

    monkeypatch.setattr(fitting, "fit", killed_at_third)
    with pytest.raises(Killed):
        twotower(*args)
    tune_dir = out / "synthetic" / "tune" / "tiny"
    assert (tune_dir / "study.journal").exists()
    assert not (tune_dir / "trials.csv").exists()  # written only when the search ends
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tune_dir / "study.journal"))))  # fmt: skip
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    calls.clear()
    capsys.readouterr()
    assert twotower(*args) == 0
    assert "tune: trials [2] were cut off by a killed run: marked FAIL" in capsys.readouterr().out
    # one trial to go, plus the retrain of the best: two trainings, not four
    assert len(calls) == 2
    frame = pd.read_csv(tune_dir / "trials.csv")
    assert list(frame["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert list(frame.loc[frame["state"] == "COMPLETE", "trial"]) == [0, 1, 3]
    assert read_json(tune_dir / "metrics.json")["trials"] == 3


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


@pytest.mark.slow
@pytest.mark.parametrize("preprocessed", [False, True])
def test_a_missing_raw_file_is_the_one_line_error_run_gives(tmp_path, capfd, preprocessed):
    conf, out, log = _conf(tmp_path), tmp_path / "outputs", tmp_path / "log.csv"
    data = ["dataset=csv", f"dataset.load.interactions={log}", f"paths.out={out}",
            *SMALL[5:], "tune.trials=1", "tune.confirm_top=0"]  # fmt: skip
    if preprocessed:  # the file was preprocessed, then deleted: tune must not train on the old
        rng = np.random.default_rng(0)
        rows = [(u, i) for u in range(40) for i in rng.choice(30, 12, replace=False)]
        pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(log, index=False)
        assert twotower("preprocess", *data) == 0
        log.unlink()
    capfd.readouterr()
    assert twotower("run", *data) == 2
    ran = capfd.readouterr().err.strip().splitlines()
    assert ran == [f"twotower run: error: {log}: file not found"]
    assert twotower("tune", "--config-dir", str(conf), "hparams_search=tiny", *data) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"twotower tune: error: {log}: file not found"
    ]
    assert not (out / "csv" / "tune").exists()
