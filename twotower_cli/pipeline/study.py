"""The Optuna side of `twotower tune`: search-space files in the syntax of Hydra's Optuna
sweeper turned into Optuna distributions, the seeded TPE sampler, and the study kept in the
tune dir (a journal file, held by one run at a time through a lock)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import optuna
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES


def search_space(params: dict, source: str) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions from `{key: "choice(...)" | "interval(a, b)" | ...}` (Hydra's
    sweep syntax); a bad entry is a one-line error naming `source` and the key."""
    if not params:
        raise TwoTowerError(f"{source}: params is empty; name at least one key to search")
    parser = OverridesParser.create()
    space = {}
    for key, text in params.items():
        where = f"{source}: params.{key}"
        try:
            sweep = parser.parse_override(f"{key}={_as_text(text)}").value()
        except HydraException as err:
            raise TwoTowerError(f"{where}: {str(err).splitlines()[0]}") from err
        log = "log" in getattr(sweep, "tags", ())
        if isinstance(sweep, ChoiceSweep):
            if not sweep.list:
                raise TwoTowerError(f"{where}: choice() needs at least one value")
            space[key] = optuna.distributions.CategoricalDistribution(sweep.list)
        elif isinstance(sweep, RangeSweep):
            step = sweep.step or 1
            if sweep.stop - step < sweep.start:
                raise TwoTowerError(f"{where}: range({sweep.start}, {sweep.stop}) is empty")
            space[key] = optuna.distributions.IntDistribution(
                int(sweep.start), int(sweep.stop - step), step=int(step)
            )
        elif isinstance(sweep, IntervalSweep):
            lo, hi = float(sweep.start), float(sweep.end)
            if not lo < hi or (log and lo <= 0):
                raise TwoTowerError(f"{where}: interval({lo}, {hi}) needs 0 {'<' if log else ''}"
                                    f"{' ' if log else ''}low < high")  # fmt: skip
            space[key] = optuna.distributions.FloatDistribution(lo, hi, log=log)
        else:
            raise TwoTowerError(
                f"{where}: {text!r} is not a search range; use choice(...), interval(low, high),"
                " tag(log, interval(low, high)) or range(a, b)"
            )
    return space


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def suggest(trial: optuna.Trial, key: str, dist) -> object:
    """The trial's value for `key` from its distribution (Optuna's public suggest_* calls)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def tpe(sampler: dict, source: str, done: int = 0) -> optuna.samplers.TPESampler:
    """TPESampler from the search file's `sampler:` block; `gamma` there is a share of the
    trials (the best share models "good" values), and a resumed study seeds TPE with
    seed + finished trials: deterministic, never a replay."""
    kwargs = dict(sampler)
    if "gamma" in kwargs:
        share = kwargs["gamma"]
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise TwoTowerError(f"{source}: sampler.gamma: {share!r} is not a share in (0, 1]")
        kwargs["gamma"] = partial(_good_trials, float(share))
    kwargs["seed"] = int(kwargs.get("seed", 0)) + done
    try:
        with warnings.catch_warnings():  # multivariate: "experimental" in optuna 4; gamma:
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # "to go in 6"
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(**kwargs)
    except TypeError as err:
        raise TwoTowerError(f"{source}: sampler: {err}") from err


def _good_trials(share: float, n: int) -> int:
    return min(math.ceil(share * n), 25)  # optuna's default_gamma with another share


@contextmanager
def study_lock(tune_dir: Path):
    """Held for a whole tune run: a second run on the same study fails fast, and a trial the
    holder finds RUNNING was left by a dead run."""
    tune_dir.mkdir(parents=True, exist_ok=True)
    with open(tune_dir / "study.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TwoTowerError(f"{tune_dir}: another `twotower tune` is running this study; "
                                "wait for it or pick another tune.name") from None  # fmt: skip
        yield


def open_study(tune_dir: Path, name: str, sampler: dict, source: str):
    """The study in `tune_dir/study.journal`, created or continued, with a seeded TPE; trials
    a killed run left RUNNING are marked FAIL (the caller holds the study's lock)."""
    drop_torn_tail(tune_dir / FILES.study_journal)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tune_dir / FILES.study_journal))
    )
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True)  # fmt: skip
    dead = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
    for number in dead:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if dead:
        print(f"tune: trials {dead} were cut off by a killed run: marked FAIL")
    study.sampler = tpe(sampler, source, len(finished(study)))
    return study


def drop_torn_tail(journal: Path) -> None:
    """Cut a half-written last line (a run killed mid-append) off the journal: optuna would
    append the next record onto it and never read the file again. Each record is one JSON line,
    written with its newline, so everything after the last newline is a torn record."""
    if not journal.exists():
        return
    with open(journal, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        tail = b""
        while len(tail) < size and b"\n" not in tail:
            step = min(1 << 16, size - len(tail))
            f.seek(size - len(tail) - step)
            tail = f.read(step) + tail
        keep = size - len(tail) + tail.rfind(b"\n") + 1  # 0 when there is no newline at all
        if keep < size:
            f.truncate(keep)
            print(
                f"tune: {journal}: dropped a half-written last line ({size - keep} bytes, "
                "a killed run's); resuming from the records before it",
                flush=True,
            )


def finished(study) -> list:
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def trials_frame(study, metric: str) -> pd.DataFrame:
    """One row per trial: number, state, the validation score, seconds, epochs, params."""
    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            metric: t.value,
            "seconds": t.user_attrs.get("seconds"),
            "epochs": t.user_attrs.get("epochs"),
            **t.params,
        }
        for t in study.trials
    ]
    return pd.DataFrame(rows)
