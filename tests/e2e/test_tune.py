"""`twotower tune`: the search-space syntax, its errors, a tiny search end to end (the top
trials confirmed with more seeds), the best overlay accepted by `twotower run`, and a killed
search resumed from its finished trials, the trial it cut off marked FAIL; a missing raw file
is the one-line error `run` gives."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import SMALL, read_json, twotower
from helpers import tune_conf

from twotower_cli.core.settings import TrainSettings
from twotower_cli.training import fitting


@pytest.mark.slow
def test_tiny_search_writes_its_artifacts_and_the_overlay_runs(tmp_path, capsys):
    conf, out = tune_conf(tmp_path), tmp_path / "outputs"
    args = ["--config-dir", str(conf), "hparams_search=tiny", *SMALL, f"paths.out={out}"]
    assert twotower("tune", *args, "tune.trials=3") == 0
    tune_dir = out / "synthetic" / "tune" / "tiny"
    frame = pd.read_csv(tune_dir / "trials.csv")
    assert list(frame["trial"]) == [0, 1, 2]
    assert set(frame["state"]) == {"COMPLETE"}
    assert frame["valid_recall@20"].between(0.05, 1.0).all()
    assert {"model.temperature", "train.lr", "seconds", "epochs"} <= set(frame.columns)
    # trial 0 starts from the command's own lr (its temperature, 0.124, is not a choice here)
    assert frame.loc[0, "train.lr"] == pytest.approx(TrainSettings().lr)
    assert frame.loc[1:, "train.lr"].ne(TrainSettings().lr).all()
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
    conf, out = tune_conf(tmp_path), tmp_path / "outputs"
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
    conf, out = tune_conf(tmp_path), tmp_path / "outputs"
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


@pytest.mark.slow
@pytest.mark.parametrize("preprocessed", [False, True])
def test_a_missing_raw_file_is_the_one_line_error_run_gives(tmp_path, capfd, preprocessed):
    conf, out, log = tune_conf(tmp_path), tmp_path / "outputs", tmp_path / "log.csv"
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
