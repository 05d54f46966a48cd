"""The Python API: what `twotower <stage> key=value ...` does, from Python, with no sys.exit.

    import twotower_cli.api as tt

    metrics = tt.run("run", ["dataset=synthetic", "train.epochs=3"])   # every stage
    metrics["model"]["recall@20"]
    figures = tt.run("train", ["model=senet"])                          # one stage
    model = tt.open_run(["dataset=synthetic"])                          # a finished run
    model.recommend(user_id=10, k=10)        # [{"item_id": ..., "score": ...}, ...]
    model.recommend(history=[1, 42], k=10)
    model.similar(1, k=10)

`run` composes the same config as the CLI (overrides, `config_dir` = `--config-dir`), checks it
and runs the stage; it returns the stage's figures (evaluate's and run's: the metrics dict of
metrics.json). `open_run` loads the run `twotower serve` would serve for those overrides
(serve.load_bundle: every artifact checked against its manifest) and answers through the same
function as the server (serve.recommend), so its answers are serve's. Errors raise
core.errors.TwoTowerError (ConfigError for config, QueryError for a bad query value).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from twotower_cli.cli import CONFIG_DIR, STAGE_WORDS, _one_line, run_stage
from twotower_cli.core.errors import ConfigError, TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.pipeline import config as schema
from twotower_cli.serve.bundle import Bundle, ServeDirs, load_bundle
from twotower_cli.serve.encoding import RequestError, UserQuery
from twotower_cli.serve.recommend import recommend, similar_items

__all__ = ["QueryError", "Run", "compose_config", "open_run", "run"]


class QueryError(TwoTowerError, ValueError):
    """A bad query value (unknown feature value, k out of range); `field` names it, as serve's
    4xx answers do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def compose_config(
    stage: str = "run", overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> DictConfig:
    """The config `twotower STAGE OVERRIDES [--config-dir DIR]` runs with, `${hydra:...}`
    interpolations resolvable. A config that does not compose is a ConfigError naming the key."""
    if stage not in STAGE_WORDS:
        raise ConfigError(f"stage: {stage!r} is not one of {', '.join(STAGE_WORDS)}")
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", [*extra, f"stage={stage}", *overrides],
                          return_hydra_config=True)  # fmt: skip
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as Hydra hands a job its config: the hydra node lives in HydraConfig
        del cfg["hydra"]
    return cfg


def run(
    stage: str = "run", overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> dict:
    """Run one stage (or `run`: all six, skipping current ones) and return its figures."""
    if stage in ("serve", "tune"):
        raise ConfigError(f"stage: {stage} is a command of its own; use the CLI (or open_run)")
    return run_stage(compose_config(stage, overrides, config_dir))


class Run:
    """A finished run, loaded as `twotower serve` loads it."""

    def __init__(self, bundle: Bundle, max_k: int) -> None:
        self.bundle = bundle
        self.max_k = max_k

    def _k(self, k: int, top: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(self.max_k, top):
            raise QueryError("k", f"k: must be between 1 and {min(self.max_k, top)}, got {k!r}")
        return k

    def recommend(
        self,
        user_id: Any = None,
        *,
        k: int = 20,
        history: Sequence | None = None,
        features: dict[str, Any] | None = None,
        exclude: Sequence = (),
        exclude_seen: bool = True,
    ) -> list[dict]:
        """Top-k items `[{"item_id", "score"}]` for a known user id, a history of raw item ids
        and/or raw user features (a cold-start profile): serve's /recommend body as arguments."""
        user = {**(features or {}), **({"user_id": user_id} if user_id is not None else {})}
        query = UserQuery(user, None if history is None else list(history), tuple(exclude),
                          exclude_seen)  # fmt: skip
        return self.recommend_many([query], k)[0]

    def recommend_many(self, queries: list[UserQuery], k: int = 20) -> list[list[dict]]:
        """serve's /recommend/batch: one list of items per query."""
        k = self._k(k, self.bundle.n_items)
        try:
            return recommend(self.bundle, queries, k)
        except RequestError as err:
            raise QueryError(err.field, str(err)) from None

    def similar(self, item_id: Any, k: int = 20) -> list[dict]:
        """The k items nearest to one item (itself left out): /items/{id}/similar."""
        k = self._k(k, self.bundle.n_items - 1)
        try:
            return similar_items(self.bundle, item_id, k)
        except RequestError as err:
            raise QueryError(err.field, str(err)) from None


def open_run(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> Run:
    """The finished run these overrides name (the one `twotower serve OVERRIDES` serves)."""
    cfg = compose_config("serve", overrides, config_dir)
    schema.check(cfg)
    dirs = ServeDirs(Layout.of(cfg.paths), cfg.index.nprobe, cfg.index.ef_search,
                     cfg.serve.runtime)  # fmt: skip
    return Run(load_bundle(dirs), int(cfg.serve.max_k))
