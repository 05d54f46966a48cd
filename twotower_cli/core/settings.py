"""Settings dataclasses: the typed shape and the bounds of the config groups that library code
reads (the top-level keys, `run`, `model`, `train`, `eval`, `index`, `exposures`, `tune`,
`export`, `report`, `serve`). Plain dataclasses, no Hydra: config.py registers them in Hydra's
ConfigStore (types checked at composition) and checks the bounds in each field's `metadata`
(ge, gt, le, lt, choices, each_ge, integer, check; `say`: the error's own wording) before a
stage runs. tests/unit/test_settings_yaml.py holds each dataclass's defaults to its conf/ YAML's
values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from twotower_cli.core.errors import ConfigError

SIMILARITIES = ("cosine", "dot")
HISTORY_POOLINGS = ("mean", "attention", "transformer")
HISTORY_MODES = ("causal", "leave_one_out")
# the user tower's optional behaviour input: the item ids a user interacted with, most recent
# last; a model that reads it has `history_len` > 0 (`model.history: true`)
HISTORY = "history"
# sequence training (history_pooling: transformer): the flat index, into the batch's
# [sequences, history_len] history, of each position that predicts its next item
HISTORY_AT = "history_at"


@dataclass
class TowerSettings:
    """What every tower variant shares (`conf/model/_tower.yaml`); `metadata` holds the bounds
    that config.check enforces on `model.<name>` before a stage runs."""

    embed_dim: int = field(default=64, metadata={"ge": 1})
    hidden: list[int] = field(default_factory=lambda: [256])
    out_dim: int = field(default=64, metadata={"ge": 1})
    dropout: float = field(default=0.16, metadata={"ge": 0.0, "lt": 1.0})
    similarity: str = field(default="cosine", metadata={"choices": SIMILARITIES})
    temperature: float = field(default=0.124, metadata={"gt": 0.0})
    # the user-history feature: the user's latest history_len items, pooled from the item
    # tower's id embeddings, with a recency prior exp(-a / history_decay) (0 = off)
    history: bool = True
    history_len: int = field(default=50, metadata={"ge": 1})
    history_pooling: str = field(default="mean", metadata={"choices": HISTORY_POOLINGS})
    history_decay: float = field(default=5.0, metadata={"ge": 0.0})
    # history_pooling: transformer, a causal self-attention encoder over the history in time
    # order (models/sequence.py), trained next-item over every position (docs/sequence.md)
    history_layers: int = field(default=2, metadata={"ge": 1})
    history_heads: int = field(default=1, metadata={"ge": 1})
    history_dropout: float = field(default=0.2, metadata={"ge": 0.0, "lt": 1.0})

    @classmethod
    def of(cls, tower: dict) -> TowerSettings:
        """From keyword arguments; an unknown key is a ConfigError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(tower) - known)
        if unknown:
            raise ConfigError(f"model.{unknown[0]}: unknown setting; known: {sorted(known)}")
        return cls(**tower)


@dataclass
class TrainSettings:
    """`conf/train/default.yaml`."""

    epochs: int = field(default=40, metadata={"ge": 1})
    batch_size: int = field(default=1024, metadata={"ge": 1})
    lr: float = field(default=2.6e-3, metadata={"gt": 0.0, "le": 10.0})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0.0})
    early_stop_k: int = field(default=20, metadata={"ge": 1})
    patience: int = field(default=4, metadata={"ge": 1})
    # a small log's epoch has few steps: the batch is halved (not below 32) until an epoch has
    # at least min_steps_per_epoch steps, and patience grows to wait at least
    # patience_min_steps steps (0 = off; fitting.adapt_to_log, docs/defaults.md)
    min_steps_per_epoch: int = field(default=32, metadata={"ge": 0})
    patience_min_steps: int = field(default=140, metadata={"ge": 0})
    # after early stopping on validation, train again from scratch on train + validation for
    # the best epoch count and keep that model, as EASE is refitted before the test
    # (fitting.refit, docs/defaults.md); the published protocols turn it off
    refit: bool = True
    # stop after this many optimiser steps in all (0 = no cap): the epoch it falls in is
    # validated and ends training (scale runs on huge logs)
    max_steps: int = field(default=0, metadata={"ge": 0})
    # early stopping's validation on a seeded sample of this many validation users (0 = all):
    # on a log with millions of users, an exact search over all of them costs more than an epoch
    valid_max_users: int = field(default=0, metadata={"ge": 0})
    device: str = "cpu"
    # embedding tables get sparse gradients and a lazy Adam (optim.LazyAdam: only the batch's
    # rows and their moments move), so a step costs O(batch), not O(users + items)
    sparse_embeddings: bool = False
    # share of training rows whose item id feature is hidden (0 = unknown), so the item tower
    # learns to rank from content alone, as it must for items with no training positive
    # (whose ids are unknown at embed time when this is > 0; pools.unknown_cold_ids)
    item_id_dropout: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0})
    # the history input of each training example (data/examples.py)
    history_mode: str = field(default="causal", metadata={"choices": HISTORY_MODES})
    # next-item training of a sequence tower (training/sequences.py): one window of
    # history_len + 1 per user (last: its latest; longer histories truncated) or all windows
    sequence_windows: str = field(default="last", metadata={"choices": ("last", "all")})
    # auto: every finished epoch's state is kept (in the train dir's .resume/), and a rerun of the
    # same command after a crash continues after the last finished epoch; never: start over
    resume: str = field(default="auto", metadata={"choices": ("auto", "never")})
    # the dense optimiser: a `_partial_` `_target_` node that the train stage instantiates
    # (conf/train/default.yaml: Adam at lr / weight_decay); None = that Adam
    optimizer: Any = None
    # data-parallel training (distributed.py): local workers, backend, collective timeout
    nproc: int = field(default=1, metadata={"ge": 1})
    backend: str = field(default="auto", metadata={"choices": ("auto", "gloo", "nccl")})
    dist_timeout_s: float = field(default=300.0, metadata={"gt": 0.0})
    # a rank's in-batch negatives: the global batch's positives (the one-process loss at
    # batch_size) or its own slice's (per-rank work independent of nproc; negatives.py)
    dist_negatives: str = field(default="global", metadata={"choices": ("global", "local")})


@dataclass
class EvalSettings:
    """`conf/eval/default.yaml`."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 50], metadata={"each_ge": 1})
    # the trending baseline (temporal splits): positives in this many hours before the test
    trending_hours: float = field(default=24.0, metadata={"gt": 0.0})
    # weight of the freshness prior `embed` adds to the logit where preprocess made one (news)
    freshness_prior: float = field(default=1.0, metadata={"ge": 0.0})
    # the metrics over a seeded sample of this many test users (0 = every test user)
    max_users: int = field(default=0, metadata={"ge": 0})
    # classical baselines beside the model (baselines.py); EASE on at most ease_max_items (the
    # most popular), its lambda picked on validation from ease_lambdas; item-KNN's
    # neighbourhood size from knn_neighbours
    baselines: list[str] = field(default_factory=lambda: ["popularity", "ease", "itemknn"])
    ease_max_items: int = field(default=20_000, metadata={"ge": 1})
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 50.0, 100.0, 200.0, 500.0,
                                                                1000.0, 2000.0])  # fmt: skip
    knn_neighbours: list[int] = field(default_factory=lambda: [10, 20, 50, 100, 200, 500, 1000],
                                      metadata={"each_ge": 1})  # fmt: skip


@dataclass
class IndexSettings:
    """`conf/index/default.yaml`."""

    factory: str = "Flat"
    nprobe: int = field(default=16, metadata={"ge": 1})
    ef_search: int = field(default=128, metadata={"ge": 1})


@dataclass
class ExposureSettings:
    """`exposures` in conf/config.yaml: shown-but-not-chosen rows as labelled negatives."""

    use: bool = False
    per_positive: float = field(default=1.0, metadata={"gt": 0.0})


# `say`: a field's own error line, formatted with its `key` and `value`
COUNT = "{key}: {value!r} is not a count (an integer >= 0)"
# the splits sample and train learn from (artifacts.store.FIT_ON names their files) and the
# losses a config may name (training.losses.LOSSES adds full_softmax, which samplers pick)
FIT_ON = ("train", "train+valid")
LOSS_CHOICES = ("auto", "bce", "sampled_softmax", "inbatch_softmax")


@dataclass
class TopSettings:
    """The top-level keys of conf/config.yaml (`integer`: an int, never a bool or a string)."""

    # the CLI fills it in with the stage word
    stage: str = "run"
    seed: int = field(default=0, metadata={
        "integer": True, "say": "{key} must be an integer, got {value!r}"})  # fmt: skip
    fit_on: str = field(default="train", metadata={"choices": FIT_ON})
    loss: str = field(default="auto", metadata={"choices": LOSS_CHOICES})
    threads: int | None = field(default=None, metadata={
        "integer": True, "ge": 1,
        "say": "{key} must be null (every core) or an integer >= 1, got {value!r}"})  # fmt: skip


@dataclass
class RunSettings:
    """`run` in conf/config.yaml: force redoes every stage of `twotower run`."""

    force: bool = False


@dataclass
class TuneSettings:
    """`conf/tune/default.yaml` (`twotower tune`, pipeline/tune.py)."""

    trials: int = field(default=20, metadata={"ge": 0, "say": COUNT})
    # a wall-clock budget of the search in minutes (None: none)
    minutes: float | None = field(default=None, metadata={
        "gt": 0.0, "say": "{key}: {value:g} is not null or a number of minutes > 0"})  # fmt: skip
    refit: bool = True
    # the study's name: conf/tune/default.yaml takes the hparams_search choice
    name: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0])
    confirm_top: int = field(default=3, metadata={"ge": 0, "say": COUNT})
    confirm_seeds: list[int] = field(default_factory=lambda: [1, 2])
    # the first trial of a new study is the command's own configuration (its searched keys'
    # values where the search space holds them), so the pick is never worse on validation
    start_from_defaults: bool = True


@dataclass
class ExportSettings:
    """`conf/export/default.yaml`: dynamo false = the TorchScript ONNX exporter."""

    dynamo: bool = False


@dataclass
class ReportSettings:
    """`conf/report/default.yaml` (`twotower report`); the report stage hands these, with the
    seed, to report.diagnostics.BucketSettings, which checks the shares' and quantiles' order."""

    k: int = field(default=20, metadata={"ge": 1, "say": "{key}: {value} must be at least 1"})
    head_share: float = 0.5
    torso_share: float = 0.8
    user_quantiles: list[float] = field(default_factory=lambda: [0.3333, 0.6667])
    random_per_positive: int = field(default=1, metadata={"ge": 1, "say": "{key}: {value} < 1"})
    compare: list[str] = field(default_factory=list)
    compare_dir: str = "outputs/compare/report"


@dataclass
class NullTrackingSettings:
    """`tracking=none` (conf/tracking/none.yaml): nothing tracked."""

    _target_: str = "twotower_cli.artifacts.tracking.NullTracker"


@dataclass
class MlflowSettings:
    """`tracking=mlflow` (conf/tracking/mlflow.yaml): artifacts.tracking.MlflowTracker's
    arguments (uri None: its local store under store_dir)."""

    uri: str | None = None
    _target_: str = "twotower_cli.artifacts.tracking.MlflowTracker"
    store_dir: str = "???"  # the YAML's: under paths.out
    experiment: str = "twotower"
    run_name: str = ""


# conf/tracking/<name>.yaml -> its settings
TRACKERS = {"none": NullTrackingSettings, "mlflow": MlflowSettings}


@dataclass
class HparamsSearchSettings:
    """`conf/hparams_search/<name>.yaml`, `twotower tune`'s search space: `sampler` holds
    optuna's TPESampler arguments, `params` config key -> a Hydra Optuna sweeper expression
    (pipeline/tune.py parses both and names the file of a bad one)."""

    sampler: dict[str, Any] = field(default_factory=lambda: {
        "seed": 0, "n_startup_trials": 8, "multivariate": True})  # fmt: skip
    params: dict[str, Any] = field(default_factory=dict)


# who runs the user tower in `serve` (export/user_tower.py: fast_user_tower)
RUNTIMES = ("auto", "onnxruntime", "torchscript", "eager")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# where `api_key: null` looks: an environment variable stays out of `ps` and of the manifests,
# which hold each stage's resolved config
API_KEY_ENV = "TWOTOWER_API_KEY"
POSITIVE = {"ge": 1, "say": "{key}: must be an integer >= 1, got {value}"}
PORT = {"ge": 1, "le": 65535, "say": "{key}: must be an integer in 1-65535, got {value}"}
SECONDS = {"gt": 0.0, "lt": float("inf"), "say": "{key}: must be > 0 seconds, got {value:g}"}


@dataclass
class ServeSettings:
    """`conf/serve/default.yaml` (`twotower serve`): where to listen, the request limits, how to
    run the tower; a bad value is one line naming the `serve.` key, before anything loads."""

    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=PORT)
    max_k: int = field(default=1000, metadata=POSITIVE)
    max_batch: int = field(default=256, metadata=POSITIVE)
    # most items one /recommend/batch answer may hold (users x k): 256 users x k=1000 is a
    # 12 MB answer whose JSON encoding holds the GIL for ~0.4 s, stalling every other client
    max_results: int = field(default=25_600, metadata=POSITIVE)
    # answer concurrent single requests with one forward pass per batch (serve/batching.py)
    micro_batch: bool = True
    # one request is a tiny forward pass: more torch/faiss threads only add hand-off cost
    threads: int = field(default=1, metadata=POSITIVE)
    # who runs the user tower (user_tower.fast_user_tower)
    runtime: str = field(default="auto", metadata={"choices": RUNTIMES})
    log_level: str = field(default="warning", metadata={"choices": LOG_LEVELS})
    # threads that answer /recommend/batch, /items/{id}/similar and large bodies, off the loop
    workers: int = field(default=2, metadata=POSITIVE)
    # limits: a larger body is answered 413 without being read; a connection must send a
    # request head within timeout_read seconds (and then the body within as many); an idle
    # keep-alive connection closes after timeout_keep_alive; beyond max_connections, 503
    max_body_bytes: int = field(default=1_048_576, metadata=POSITIVE)
    max_header_bytes: int = field(default=16_384, metadata={
        "ge": 1024, "say": "{key}: must be an integer >= 1024, got {value}"})  # fmt: skip
    timeout_read: float = field(default=10.0, metadata=SECONDS)
    timeout_keep_alive: float = field(default=5.0, metadata=SECONDS)
    max_connections: int = field(default=1024, metadata=POSITIVE)
    # when set, every route but GET /health wants `Authorization: Bearer KEY` or `X-API-Key`;
    # None takes $TWOTOWER_API_KEY when that is set
    api_key: str | None = None
    # host names a request's Host header may carry besides IP literals, `localhost` and `host`
    # (a web page that rebinds its own name to this address sends that name); "*" accepts any
    allowed_hosts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """From Python too (`ServeSettings(port=0)`): the types the schema gives a YAML value,
        the field bounds, the key from the environment and the host names, lower-cased."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool)
                                               or not isinstance(value, int | float)):  # fmt: skip
                raise ConfigError(f"serve.{f.name}: expected a number, got {value!r}")
            if f.type == "int" and int(value) != value:
                raise ConfigError(f"serve.{f.name}: must be an integer, got {value}")
        check_bounds(self, "serve")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None:
            if isinstance(self.api_key, bool) or not str(self.api_key).strip():
                raise ConfigError("serve.api_key: expected a non-empty string or null")
            self.api_key = str(self.api_key)  # `ServeSettings(api_key=1234)`
        self.allowed_hosts = _host_names(self.allowed_hosts)

    def check_key_env(self) -> None:
        """Refuse to serve with `$TWOTOWER_API_KEY` set but empty: the key was meant to be on
        and would silently be off. Checked when a server is built (every stage checks the
        settings, and the variable is no business of theirs)."""
        if self.api_key is None and os.environ.get(API_KEY_ENV, "x").strip() == "":
            raise ConfigError(f"${API_KEY_ENV} is set but empty: set the key, or unset the "
                              "variable to serve without one")  # fmt: skip


def _host_names(names) -> list[str]:
    """`serve.allowed_hosts` as lower-case names (a ListConfig or a list from Python)."""
    if names is None:
        return []
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"serve.allowed_hosts: expected a list of host names, got {names!r}")
    return [n.strip().lower() for n in names]


BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b,
            "lt": lambda v, b: v < b}  # fmt: skip


def check_bounds(settings, prefix: str) -> None:
    """ConfigError naming `prefix.<field>` (`<field>` when prefix is "") for the first value
    outside its field's bounds."""
    for f in fields(settings):
        value, rule = getattr(settings, f.name), f.metadata
        key = f"{prefix}.{f.name}" if prefix else f.name
        line = rule.get("say", "").format(key=key, value=value) if value is not None else ""
        if rule.get("integer") and value is not None and type(value) is not int:
            raise ConfigError(line or f"{key}: expected an integer, got {value!r}")
        if "check" in rule and value is not None:
            rule["check"](value, key)  # a check of its own: check(value, key) raises ConfigError
        if "choices" in rule and value not in rule["choices"]:
            raise ConfigError(line or f"{key}: {value!r} not in {tuple(rule['choices'])}")
        if "each_ge" in rule:
            if not value or any(v < rule["each_ge"] for v in value):
                raise ConfigError(line or f"{key}: need a non-empty list of values >= "
                                  f"{rule['each_ge']}, got {list(value or [])}")  # fmt: skip
        for op, word in BOUNDS.items():
            if op in rule and value is not None and not BOUND_OK[op](value, rule[op]):
                raise ConfigError(line or f"{key} must be {word} {rule[op]}, got {value!r}")
