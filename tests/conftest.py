"""Shared test helpers and fixtures, seen by both lanes: tests/unit/ (`make test-fast`) and
tests/e2e/ (marked slow by its own conftest; `make test` runs both). They run the CLI in-process
on a small generated data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twotower_cli.cli import CONFIG_DIR, main

# ~2k positives: every stage runs in a second or two
SMALL = [
    "dataset=synthetic",
    "dataset.load.n_users=300",
    "dataset.load.n_items=200",
    "dataset.load.n_interactions=6000",
    "dataset.load.n_clusters=8",
    "train.epochs=3",
    "train.batch_size=256",
    # the batch as given (the log-size rule, tests/unit/test_defaults.py, would halve it here)
    "train.min_steps_per_epoch=0",
    "train.patience_min_steps=0",
    # the plain towers (the default user history is run by the tests that name it and by the
    # ML-100K and news runs); one shared shape, so stages after run take the same SMALL
    "model.history=false",
]


def options(group: str) -> list[str]:
    """The options of a config group (`_name.yaml` files are shared bases, not options)."""
    files = (Path(CONFIG_DIR) / group).glob("*.yaml")
    return sorted(p.stem for p in files if not p.stem.startswith("_"))


def twotower(*args: str) -> int:
    """Run `twotower ARGS` in this process; return the exit code."""
    try:
        main(list(args))
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """paths.out of one finished `twotower run` on SMALL, shared by tests that read it (they may
    add stages, e.g. export, but must not rewrite it; copy it to change it)."""
    out = tmp_path_factory.mktemp("small_run") / "outputs"
    assert twotower("run", *SMALL, f"paths.out={out}") == 0
    return out


@pytest.fixture(scope="session")
def small():
    """(encoded tables, splits) of a small synthetic log, preprocessed in memory (no CLI)."""
    from twotower_cli.data import synthetic
    from twotower_cli.data.preprocess import SplitSettings, preprocess

    raw = synthetic.load(n_users=400, n_items=300, n_interactions=8000, n_clusters=8)
    enc, parts, _ = preprocess(raw, "click", SplitSettings())
    return enc, parts


@pytest.fixture(scope="module")
def news_dir(tmp_path_factory) -> tuple[Path, dict]:
    """(raw dir, planted preferences) of a generated news app log (tests/fixtures_news.py)."""
    from fixtures_news import write_news

    raw = tmp_path_factory.mktemp("news")
    planted = write_news(raw, n_users=200, expos_per_day=12)
    return raw, planted


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
