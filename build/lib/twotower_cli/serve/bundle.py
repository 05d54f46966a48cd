"""Everything one run serves, loaded once (`twotower serve`): the model and its fastest runtime,
the request encoder, the faiss index, item ids and vectors, stored profiles and seen items.

`ServeState` holds the current bundle and swaps in a freshly loaded one on SIGHUP. A request
takes the bundle reference once, so requests in flight finish on the bundle they started with,
and a bundle that fails to load is never served.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from twotower_cli.artifacts.checkpoint import load_dir
from twotower_cli.artifacts.store import check_chain, read_manifest, require, seen_rows
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.data.tables import load_schema
from twotower_cli.export.user_tower import fast_user_tower, history_length
from twotower_cli.retrieval.search import read_index
from twotower_cli.serve.encoding import UserEncoder, UserQuery, csr

log = logging.getLogger("twotower.serve")


@dataclass
class ServeDirs:
    """Which run to serve (its stage dirs: layout.Layout) and how to search it."""

    layout: Layout
    nprobe: int = 16
    ef_search: int = 128
    runtime: str = "auto"  # who runs the user tower: see user_tower.fast_user_tower

    @property
    def run(self) -> str:
        return self.layout.run

    def base(self) -> Path:
        """What /health's dirs are relative to: paths.out."""
        return self.layout.out


def relative(path: Path, base: Path) -> str:
    """`path` relative to `base` (no absolute path leaves the server), else its last part."""
    try:
        return str(Path(path).absolute().relative_to(Path(base).absolute()))
    except ValueError:
        return Path(path).name


@dataclass
class Bundle:
    """One run, loaded and ready: everything a request touches."""

    run: str
    model: torch.nn.Module
    encoder: UserEncoder
    index: Any
    item_raw: np.ndarray  # dense item id -> raw item id (index 0 unused)
    item_vectors: np.ndarray  # row i = dense item id i + 1
    seen: tuple[np.ndarray, np.ndarray]  # CSR of train+valid items per dense user id
    loaded_at: float
    sources: dict
    tower: Callable  # the user tower: positional tensors -> numpy vectors (fast_user_tower)
    tower_inputs: list[str]

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def n_users(self) -> int:
        return len(self.seen[0]) - 2

    def uses_history(self) -> bool:
        return self.encoder.history_len > 0

    def user_vectors(self, feats: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            u = self.tower(*(feats[n] for n in self.tower_inputs))
        return np.ascontiguousarray(u, np.float32)


def load_bundle(dirs: ServeDirs, load_model: Callable[[Path], tuple] = load_dir) -> Bundle:
    """Load a run's serving inputs, each checked against its manifest and all of one chain.
    `load_model(train_dir) -> (model, checkpoint)` rebuilds the model (checkpoint.load_dir)."""
    L = dirs.layout
    stages = ("preprocess", "train", "embed", "index")
    check_chain([require(getattr(L, s), s) for s in stages])  # one run, not a mix of two
    model, _ = load_model(L.train)
    schema = load_schema(L.preprocess)
    vocabs = json.loads(L.vocabs.read_text())
    users = pd.read_parquet(L.users)
    encoder = UserEncoder(schema["user"], vocabs["user"], users, vocabs["item"]["item"],
                          history_length(model))  # fmt: skip
    index = read_index(L.faiss_index, dirs.nprobe, dirs.ef_search)
    item_ids = np.load(L.ids("item"))
    item_vectors = np.ascontiguousarray(np.load(L.vectors("item")), np.float32)
    # faiss row i must be dense item id i + 1, as embed wrote it
    if not np.array_equal(item_ids, np.arange(1, index.ntotal + 1)):
        raise TwoTowerError(f"{L.index}: index does not match {L.embed}; rerun index")
    item_raw = np.array([None, *vocabs["item"]["item"]], dtype=object)
    seen_csr = csr(seen_rows(L.preprocess, columns=["user", "item", "timestamp"]), len(users))
    sources: dict = {s: relative(getattr(L, s), dirs.base()) for s in stages}
    sources["trained"] = read_manifest(L.train).get("figures", {})
    example = encoder.encode([UserQuery({}), UserQuery({"user_id": vocabs["user"]["user"][0]})],
                             seen_csr)  # fmt: skip
    tower, names, runtime = fast_user_tower(model.eval(), example, dirs.runtime)
    sources["runtime"] = runtime
    return Bundle(dirs.run, model, encoder, index, item_raw, item_vectors, seen_csr,
                  time.time(), sources, tower, names)  # fmt: skip


class ServeState:
    """The bundle being served and how to load a fresh one. `reload()` loads aside and swaps
    one reference: a request that already holds the old bundle finishes on it. A failed
    reload keeps the old bundle; its error (paths relative to `root`) shows in /health."""

    def __init__(self, loader: Callable[[], Bundle], root: Path | None = None) -> None:
        self.loader = loader
        self.root = root
        self.bundle = loader()
        self.generation = 1
        self.last_reload: dict = {"ok": True, "at": self.bundle.loaded_at}
        self._lock = threading.Lock()

    def reload(self) -> bool:
        with self._lock:  # two SIGHUPs in a row load one after the other
            try:
                fresh = self.loader()
            except Exception as err:  # noqa: BLE001 -- a bad new artifact must not stop serving
                log.error("reload failed, still serving generation %d: %s", self.generation, err)
                self.last_reload = {"ok": False, "at": time.time(), "error": self._public(err)}
                return False
            self.bundle = fresh
            self.generation += 1
            self.last_reload = {"ok": True, "at": fresh.loaded_at}
            log.info("reloaded: generation %d", self.generation)
            return True

    def _public(self, err: Exception) -> str:
        text = str(err)
        if self.root is not None:  # the longer (absolute) form first
            for root in sorted({str(Path(self.root).absolute()), str(self.root)}, key=len)[::-1]:
                text = text.replace(root + os.sep, "")
        return text
