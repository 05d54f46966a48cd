"""`twotower tune`: an Optuna search on validation, then the best configuration retrained and
evaluated on test.

The search space is a file in `conf/hparams_search/` (`hparams_search=NAME`) written in the
syntax of Hydra's Optuna sweeper (`choice(...)`, `interval(a, b)`, `tag(log, interval(a, b))`,
`range(a, b)`), so the same files would serve `hydra-optuna-sweeper`; its 1.3 release pins
optuna < 3, so twotower drives current Optuna itself: each trial composes the config files
with Hydra's compose API (command-line overrides + the trial's values), trains in memory
(fitting.fit) and scores validation Recall@`train.early_stop_k`; test is never read until the
best trial is retrained. Preprocess and sample outputs are made once per sampler and reused.
One seed's validation score is noisy, so the top `tune.confirm_top` trials are trained again
with `tune.confirm_seeds` and the best mean over seeds is retrained: under `tune.refit`, on
train + validation (`fit_on=train+valid`) for the mean best epoch of its validation runs, as
EASE is refitted on both. The study (study.py) lives in `<tune_dir>/study.journal`, so a killed
tune run restarted with the same command continues from its finished trials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from twotower_cli.artifacts.store import StageOutput
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.pipeline import stages
from twotower_cli.pipeline.study import (
    finished,
    open_study,
    search_space,
    study_lock,
    suggest,
    tpe,
    trials_frame,
)
from twotower_cli.report import plots
from twotower_cli.training import fitting

# command-line keys that say how to run, not what to train: left out of best.yaml and of the
# check that a resumed study was started with the same settings
RUN_KEYS = ("stage", "threads", "seed", "tune.", "hparams_search", "paths.", "hydra.")
GROUPS = ("dataset", "sampler", "model")


def _override(key: str, value) -> str:
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def _command_overrides() -> list[str]:
    """The tune command's own overrides (Hydra's record of them), less the stage word."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("stage=")]


def _is_run_key(override: str) -> bool:
    key = override.lstrip("+~").split("=")[0]
    return any(key == k or key.startswith(k) for k in RUN_KEYS)


def compose_run(overrides: list[str]) -> tuple[DictConfig, dict]:
    """The config of `twotower ... OVERRIDES` resolved as a stage would see it (paths derived
    from these group choices, not the tune command's), and its group choices."""
    hc = HydraConfig.instance()
    saved = hc.cfg
    try:
        full = compose("config", overrides=overrides, return_hydra_config=True)
        hc.set_config(full)  # the `${hydra:runtime.choices.*}` in paths read this
        keys = [k for k in full if k != "hydra"]
        cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(full, keys),
                                                      resolve=True))  # fmt: skip
        choices = dict(full.hydra.runtime.choices)
    finally:
        hc.cfg = saved
    return cfg, choices


def _ensure_inputs(cfg: DictConfig, made: set) -> None:
    """Preprocess and sample outputs for this config: reused when made with the same settings
    (the same check `train` does), made once otherwise."""
    if cfg.paths.sample_dir in made:
        return
    _ensure_preprocess(cfg)
    try:
        stages.train_inputs(cfg)
    except TwoTowerError:
        stages.sample(cfg)
    made.add(cfg.paths.sample_dir)


def _ensure_preprocess(cfg: DictConfig) -> None:
    """Preprocess output for this config: reused when made with the same settings from the raw
    files as they are now (`run`'s check), made otherwise (a missing raw file: `run`'s error)."""
    try:
        stages._earlier(cfg, "preprocess")
        if stages.sources_current(cfg, Path(cfg.paths.preprocess_dir)):
            return
    except TwoTowerError:
        pass
    stages.preprocess(cfg)


def overlay(params: dict, command: list[str], choices: dict, run: str, header: str) -> str:
    """best.yaml: an experiment overlay (`# @package _global_`) with the best trial's group
    choices and values plus the tune command's own settings (run keys aside)."""
    body = OmegaConf.create({})
    parser = OverridesParser.create()
    groups = list(GROUPS)
    for text in [o for o in command if not _is_run_key(o)] + [
        _override(k, v) for k, v in params.items()
    ]:
        o = parser.parse_override(text)
        if o.key_or_group in choices:  # a group choice: the defaults list below
            groups += [] if o.key_or_group in groups else [o.key_or_group]
        elif not o.is_delete():
            OmegaConf.update(body, o.key_or_group, o.value(), force_add=True)
    OmegaConf.update(body, "paths.run", run, force_add=True)
    defaults = [{f"override /{g}": choices[g]} for g in groups]
    text = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **body}))
    return f"# @package _global_\n{header}{text}"


def _trial_settings(cfg: DictConfig) -> tuple[dict, str, dict]:
    hs = cfg.hparams_search
    source = f"conf/hparams_search/{HydraConfig.get().runtime.choices.get('hparams_search')}.yaml"
    params, sampler = (OmegaConf.to_container(hs[k], resolve=True) if hs.get(k) else {}
                       for k in ("params", "sampler"))  # fmt: skip
    return search_space(params, source), source, sampler


def run_tune(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    if cfg.fit_on != "train":
        raise TwoTowerError(f"fit_on={cfg.fit_on}: tune's trials are scored on validation, so "
                            "they train on train; tune.refit=true retrains the pick on "
                            "train+valid")  # fmt: skip
    space, source, sampler = _trial_settings(cfg)
    tune_dir, name = Path(cfg.paths.tune_dir), str(cfg.tune.name)
    command = _command_overrides()
    base = [o for o in command if not o.startswith(("tune.", "hparams_search"))]
    k = int(cfg.train.early_stop_k)
    metric = f"valid_recall@{k}"
    # every parameter at its first value composes, or the file names a bad key now
    probe = [_override(key, d.choices[0] if hasattr(d, "choices") else d.low)
             for key, d in space.items()]  # fmt: skip
    try:
        probe_cfg, _ = compose_run([*base, *probe])
    except HydraException as err:
        raise TwoTowerError(f"{source}: {str(err).splitlines()[0]}") from err
    tpe(sampler, source)  # a bad sampler argument fails before the tune dir exists
    _ensure_preprocess(probe_cfg)  # and a missing or changed raw file, as `run` finds it
    with study_lock(tune_dir):
        study = open_study(tune_dir, name, sampler, source)
        space_text = {k: str(v) for k, v in cfg.hparams_search.params.items()}
        settings = {"overrides": sorted(o for o in base if not _is_run_key(o)),
                    "space": space_text}  # fmt: skip
        if "settings" not in study.user_attrs:
            study.set_user_attr("settings", settings)
        elif study.user_attrs["settings"] != settings:
            raise TwoTowerError(f"{tune_dir} holds a study started with "
                                f"{study.user_attrs['settings']}; rerun with those settings or "
                                "pick another tune.name")  # fmt: skip
        made: set = set()
        n_new = max(0, int(cfg.tune.trials) - len(finished(study)))
        print(f"tune: {len(finished(study))} finished trials in {tune_dir}, {n_new} to run")

        def objective(trial: optuna.Trial) -> float:
            params = {key: suggest(trial, key, dist) for key, dist in space.items()}
            start = time.perf_counter()
            score, epochs, best_epoch = _score([*base, *_overrides(params)], metric, made)
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
            trial.set_user_attr("epochs", epochs)
            trial.set_user_attr("best_epoch", best_epoch)
            best = max([score, *(t.value for t in finished(trial.study))])
            print(f"tune: trial {trial.number} {metric} {score:.4f} (best {best:.4f}) "
                  f"{json.dumps(params)}", flush=True)  # fmt: skip
            return score

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if cfg.tune.start_from_defaults and not study.trials and n_new:
            study.enqueue_trial(starting_point(space, *compose_run(base)))
        _search(cfg, study, objective, n_new, started)
        best, means = confirm(cfg, study, base, metric, made, _budget_s(cfg, started))
        return _retrain_best(cfg, study, best, means, base, command, metric, list(space),
                             started, made)  # fmt: skip


def starting_point(space: dict, cfg: DictConfig, choices: dict) -> dict:
    """The searched keys' values in the command's own config (a group's: its choice), where the
    search space holds them; the trial's other keys are left to the sampler."""
    point = {}
    for key, dist in space.items():
        value = choices.get(key) if key in choices else OmegaConf.select(cfg, key)
        if isinstance(value, list | dict) or value is None:
            continue
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if value in dist.choices:
                point[key] = dist.choices[dist.choices.index(value)]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if dist.low <= value <= dist.high:
                point[key] = value
    return point


def _search(cfg: DictConfig, study, objective, n_new: int, started: float) -> None:
    """Run `n_new` trials, or fewer when `tune.minutes` is spent (optuna starts no trial after
    its timeout); a study with no finished trial runs one whatever the budget, to refit."""
    if _budget_s(cfg, started) is not None and n_new and not finished(study):
        study.optimize(objective, n_trials=1, catch=())
        n_new -= 1
    study.optimize(objective, n_trials=n_new, catch=(), timeout=_budget_s(cfg, started))
    if cfg.tune.get("minutes") is not None and len(finished(study)) < int(cfg.tune.trials):
        print(f"tune: tune.minutes={cfg.tune.minutes} spent after "
              f"{len(finished(study))} of {cfg.tune.trials} trials", flush=True)  # fmt: skip


def _budget_s(cfg: DictConfig, started: float) -> float | None:
    """Seconds left of `tune.minutes` (None: no budget); optuna starts no trial past it."""
    if cfg.tune.get("minutes") is None:
        return None
    return max(0.0, 60.0 * float(cfg.tune.minutes) - (time.perf_counter() - started))


def _overrides(params: dict) -> list[str]:
    return [_override(k, v) for k, v in params.items()]


def _score(overrides: list[str], metric: str, made: set) -> tuple[float, int, int]:
    """Train `twotower ... OVERRIDES` in memory: its best validation score, the epochs run and
    the epoch of the best score (the weights early stopping keeps)."""
    trial_cfg, _ = compose_run(overrides)
    _ensure_inputs(trial_cfg, made)
    inputs = stages.train_inputs(trial_cfg)
    history = fitting.fit(stages.fit_settings(trial_cfg), *inputs).history
    best = max(history, key=lambda h: h[metric])
    return best[metric], len(history), int(best["epoch"])


def best_epoch(trial, patience: int) -> int:
    """The epoch whose weights a trial kept; a study from before `best_epoch` was recorded
    gives the epochs run less the patience waited after the best."""
    return int(trial.user_attrs.get("best_epoch") or max(1, trial.user_attrs["epochs"] - patience))


def refit_epochs(best_epochs: list[int]) -> int:
    """The epochs of the refit on train + validation: the mean of the validation runs' best
    epochs (over the confirmation seeds), rounded."""
    return max(1, round(float(np.mean(best_epochs))))


def confirm(cfg: DictConfig, study, base: list[str], metric: str, made: set,
            budget_s: float | None = None) -> tuple:  # fmt: skip
    """The trial to retrain: the top `tune.confirm_top` trials by their score are trained
    again with each of `tune.confirm_seeds` (in memory, validation only) and the best mean over
    seeds wins, so a lucky seed does not pick the configuration (docs/tuning.md). Scores are
    stored in the study, so a restarted run does not train them again. Returns the trial and
    {trial number: {"seeds": {seed: score}, "mean": ...}} of the confirmed ones. With
    `budget_s` left of tune.minutes, the confirmation runs only if its trainings fit in it at
    the trials' mean seconds; else the best single score is taken."""
    top = sorted(finished(study), key=lambda t: t.value, reverse=True)[: cfg.tune.confirm_top]
    seeds = [int(s) for s in cfg.tune.confirm_seeds if int(s) != int(cfg.seed)]
    if len(top) < 2 or not seeds:
        return study.best_trial, {}
    cost = len(top) * len(seeds) * np.mean([t.user_attrs.get("seconds", 0) for t in top])
    if budget_s is not None and cost > budget_s and "confirm" not in study.user_attrs:
        print(f"tune: no confirmation with more seeds (about {cost:.0f} s, {budget_s:.0f} s "
              "left of tune.minutes): the best single score is retrained", flush=True)  # fmt: skip
        return study.best_trial, {}
    stored = study.user_attrs.get("confirm", {})
    stored_epochs = study.user_attrs.get("confirm_epochs", {})
    means = {}
    for t in top:
        scores = {str(cfg.seed): t.value, **stored.get(str(t.number), {})}
        epochs = {str(cfg.seed): best_epoch(t, cfg.train.patience),
                  **stored_epochs.get(str(t.number), {})}  # fmt: skip
        for seed in seeds:
            if str(seed) not in scores or str(seed) not in epochs:
                scores[str(seed)], _, epochs[str(seed)] = _score(
                    [*base, *_overrides(t.params), f"seed={seed}"], metric, made
                )
                stored = {**stored, str(t.number): scores}
                stored_epochs = {**stored_epochs, str(t.number): epochs}
                study.set_user_attr("confirm", stored)
                study.set_user_attr("confirm_epochs", stored_epochs)
        runs = {s: scores[str(s)] for s in [int(cfg.seed), *seeds]}
        means[t.number] = {"seeds": runs, "mean": float(np.mean(list(runs.values()))),
                           "best_epochs": {s: epochs[str(s)] for s in runs}}  # fmt: skip
        print(f"tune: trial {t.number} {metric} seeds {list(runs)}: "
              f"{' / '.join(f'{v:.4f}' for v in runs.values())}, "
              f"mean {means[t.number]['mean']:.4f}", flush=True)  # fmt: skip
    number = max(means, key=lambda n: means[n]["mean"])
    return study.trials[number], means


def refit_settings(cfg: DictConfig, best, means: dict) -> dict:
    """What the chosen trial is retrained with: under tune.refit, train + validation for the
    mean best epoch of its validation runs (else on train, early-stopped as the trial was)."""
    if not cfg.tune.refit:  # as its trials trained: early-stopped on train, no train.refit
        return {"train.refit": False}
    epochs = (list(means[best.number]["best_epochs"].values()) if best.number in means
              else [best_epoch(best, cfg.train.patience)])  # fmt: skip
    return {"fit_on": "train+valid", "train.epochs": refit_epochs(epochs)}


def _retrain_best(cfg, study, best, means, base, command, metric, params, started,
                  made) -> dict:  # fmt: skip
    """The chosen trial retrained for each of tune.seeds (on train + validation under
    tune.refit) and run through embed, index and evaluate; tune_dir gets trials.csv,
    best.yaml, plots and metrics.json."""
    tune_dir, name = Path(cfg.paths.tune_dir), str(cfg.tune.name)
    refit = refit_settings(cfg, best, means)
    overrides = [*base, *_overrides(best.params), *_overrides(refit)]
    run = f"tuned-{name}"
    fitted = (f"on train + valid for {refit['train.epochs']} epochs" if "fit_on" in refit
              else "on train, early-stopped on validation")  # fmt: skip
    print(f"tune: retraining trial {best.number} {fitted}, seeds {list(cfg.tune.seeds)}")
    per_seed = {}
    for seed in cfg.tune.seeds:
        run_cfg, choices = compose_run([*overrides, f"seed={seed}", f"paths.run={run}-s{seed}"])
        _ensure_inputs(run_cfg, made)  # a refit's sample of train + validation, made once
        for stage in (stages.train, stages.embed, stages.index, stages.evaluate):
            per_seed[int(seed)] = stage(run_cfg)
    ks = list(cfg.eval.ks)
    test = {
        f"recall@{k}": {
            "seeds": [per_seed[s]["model"][f"recall@{k}"] for s in per_seed],
            "mean": float(np.mean([per_seed[s]["model"][f"recall@{k}"] for s in per_seed])),
        }
        for k in ks
    }
    first = per_seed[next(iter(per_seed))]
    metrics = {
        "best_trial": best.number,
        metric: best.value,
        "params": best.params,
        # the retrain: fit_on and epochs of the refit on train + validation, or train.refit off
        "refit": refit,
        "trials": len(finished(study)),
        # the top trials trained again with other seeds: the best mean picked `best_trial`
        "confirmed": means,
        "test_model": test,
        "per_seed": per_seed,
        "baselines": {b: first[b] for b in ("popularity", "ease", "itemknn") if b in first},
    }
    mean = f", mean over seeds {means[best.number]['mean']:.4f}" if means else ""
    header = (f"# `twotower tune` best of {len(finished(study))} trials on validation "
              f"({metric} {best.value:.4f}{mean}, trial {best.number}); {tune_dir}\n")  # fmt: skip
    if "fit_on" in refit:
        header += (f"# refit on train + validation for {refit['train.epochs']} epochs (the "
                   "mean best epoch of its validation runs; tune.refit)\n")  # fmt: skip
    with StageOutput("tune", tune_dir, stages._config(cfg), [cfg.paths.preprocess_dir]) as out:
        frame = trials_frame(study, metric)
        frame.insert(3, f"{metric}_mean", frame["trial"].map(
            lambda n: means[n]["mean"] if n in means else None))  # fmt: skip
        frame.to_csv(out.path(FILES.trials), index=False)
        out.path(FILES.best).write_text(overlay({**best.params, **refit}, command, choices,
                                                 run, header))  # fmt: skip
        for png, data in plots.tune_plots(frame, metric, params).items():
            out.path(png).write_bytes(data)
        out.path(FILES.metrics).write_text(json.dumps(metrics, indent=1))
        test_means = {f"test_recall@{k}_mean": test[f"recall@{k}"]["mean"] for k in ks}
        # this run's whole time (the manifest's `seconds` count only the final evaluate)
        out.figures = {metric: best.value, "trials": len(finished(study)), **test_means,
                       "run_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    print(f"tune: best trial {best.number} {metric} {best.value:.4f} {json.dumps(best.params)}")
    for k in ks:
        seeds = " / ".join(f"{v:.4f}" for v in test[f"recall@{k}"]["seeds"])
        print(f"tune: test recall@{k} seeds {list(per_seed)}: {seeds}, "
              f"mean {test[f'recall@{k}']['mean']:.4f}")  # fmt: skip
    return metrics
