"""Everything one run serves, loaded once (`twotower serve`): the model and its fastest runtime,
the request encoder, the faiss index, item ids and vectors, stored profiles and seen items.

`ServeState` holds the current bundle and swaps in a freshly loaded one on SIGHUP. A request
takes the bundle reference once, so requests in flight finish on the bundle they started with,
and a bundle that fails to load is never served.
"""

from __future__ import annotations

import hashlib
import io
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
from twotower_cli.artifacts.store import MANIFEST, NEXT, SEEN, lineage, read_manifest
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.data.tables import Field
from twotower_cli.export.user_tower import fast_user_tower, history_length
from twotower_cli.retrieval.search import set_search_params
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


class StageFiles:
    """A finished stage dir as serve reads it: the manifest read once, and each file's bytes
    checked against the manifest's size and sha256 as they are read. What is loaded is what was
    hashed, on every (re)load: no cache, and no window between check and read in which another
    run's file could slip in."""

    def __init__(self, stage_dir: Path, command: str) -> None:
        self.dir = Path(stage_dir)
        self.command = command
        if not (self.dir / MANIFEST).exists():
            raise TwoTowerError(f"{self.dir} has no finished output: run `twotower {command}` "
                                "first")  # fmt: skip
        self.manifest = read_manifest(self.dir, command)
        self.outputs = self.manifest.get("outputs")
        if not isinstance(self.outputs, dict):
            raise TwoTowerError(f"{self.dir / MANIFEST}: lists no output hashes: rerun "
                                f"`twotower {command}`")  # fmt: skip

    def read(self, name: str) -> bytes:
        want = self.outputs.get(name)
        try:
            data = (self.dir / name).read_bytes()
        except OSError:
            data = None
        if not (isinstance(want, dict) and data is not None and len(data) == want.get("bytes")
                and hashlib.sha256(data).hexdigest() == want.get("sha256")):  # fmt: skip
            raise TwoTowerError(f"{self.dir / name}: missing, truncated or changed since "
                                f"`twotower {self.command}` wrote it: rerun `twotower "
                                f"{self.command}`")  # fmt: skip
        return data


def one_chain(stages: list[StageFiles]) -> None:
    """Stage dirs read together come from one chain (store.check_chain, on the manifests
    already read rather than read again)."""
    seen: dict[str, tuple[str, StageFiles]] = {}
    for files in stages:  # earlier stages first
        for stage, ident in lineage(files.manifest).items():
            first = seen.setdefault(stage, (ident, files))
            if first[0] != ident:
                stale = first[1].manifest.get("stage", stage)
                rerun = NEXT.get(stale, stale)
                raise TwoTowerError(f"{files.dir} was made from another {stage} output than "
                                    f"{first[1].dir} holds: rerun `twotower {rerun}` and the "
                                    "stages after it")  # fmt: skip


def _faiss_index(files: StageFiles, name: str, nprobe: int, ef_search: int):
    import faiss

    try:
        index = faiss.deserialize_index(np.frombuffer(files.read(name), dtype=np.uint8))
    except RuntimeError as err:
        raise TwoTowerError(
            f"{files.dir / name}: unreadable faiss index "
            f"({str(err).splitlines()[0][:120]}); rerun `twotower index`"
        ) from None
    set_search_params(index, nprobe, ef_search)
    return index


def load_bundle(dirs: ServeDirs, load_model: Callable[[Path, bytes], tuple] = load_dir) -> Bundle:
    """Load a run's serving inputs, all of one chain, each file's bytes checked against its
    manifest as read (StageFiles). `load_model(train_dir, model_pt_bytes) -> (model,
    checkpoint)` rebuilds the model (checkpoint.load_dir)."""
    L = dirs.layout
    names = ("preprocess", "train", "embed", "index")
    prep, train, embed, index_files = files = [StageFiles(getattr(L, s), s) for s in names]
    one_chain(files)  # one run, not a mix of two
    model, ckpt = load_model(L.train, train.read(L.model.name))
    schema = {side: [Field(**f) for f in fs]
              for side, fs in json.loads(prep.read(L.schema.name)).items()}  # fmt: skip
    vocabs = json.loads(prep.read(L.vocabs.name))
    users = pd.read_parquet(io.BytesIO(prep.read(L.users.name)))
    index = _faiss_index(index_files, L.faiss_index.name, dirs.nprobe, dirs.ef_search)
    item_ids = np.load(io.BytesIO(embed.read(L.ids("item").name)))
    item_vectors = np.load(io.BytesIO(embed.read(L.vectors("item").name)))
    # faiss row i must be dense item id i + 1, as embed wrote it
    if not np.array_equal(item_ids, np.arange(1, index.ntotal + 1)):
        raise TwoTowerError(f"{L.index}: index does not match {L.embed}; rerun index")
    seen = pd.concat([pd.read_parquet(io.BytesIO(prep.read(L.split(s).name)),
                                      columns=["user", "item", "timestamp"]) for s in SEEN],
                     ignore_index=True)  # fmt: skip
    check_sizes(ckpt.get("schema", {}), schema, vocabs, users, index.ntotal, L.preprocess)
    encoder = UserEncoder(schema["user"], vocabs["user"], users, vocabs["item"]["item"],
                          history_length(model))  # fmt: skip
    seen_csr = csr(seen, len(users))
    if len(seen_csr[1]) and not 1 <= seen_csr[1].min() <= seen_csr[1].max() <= index.ntotal:
        raise TwoTowerError(f"{L.preprocess}: seen items outside the catalogue; rerun "
                            "`twotower preprocess`")  # fmt: skip
    sources: dict = {s: relative(getattr(L, s), dirs.base()) for s in names}
    sources["trained"] = train.manifest.get("figures", {})
    example = encoder.encode([UserQuery({}), UserQuery({"user_id": vocabs["user"]["user"][0]})],
                             seen_csr)  # fmt: skip
    tower, inputs, runtime = fast_user_tower(model.eval(), example, dirs.runtime)
    sources["runtime"] = runtime
    item_raw = np.array([None, *vocabs["item"]["item"]], dtype=object)
    return Bundle(dirs.run, model, encoder, index, item_raw,
                  np.ascontiguousarray(item_vectors, np.float32), seen_csr, time.time(),
                  sources, tower, inputs)  # fmt: skip


def check_sizes(trained: dict, schema: dict, vocabs: dict, users: pd.DataFrame, n_items: int,
                prep_dir: Path) -> None:  # fmt: skip
    """The preprocess output serve encodes requests with must be the one the model was trained
    on: the same user fields and vocabulary sizes as the checkpoint, a profile per user id and
    an item id per index row. (A longer vocabulary gives ids past the model's embedding tables:
    500s at request time instead of one line at load.)"""
    rerun = f"{prep_dir}: does not fit the trained model ({{}}); rerun `twotower preprocess`"
    fields = [Field(**f) for f in trained.get("user", [])] if trained else schema["user"]
    if fields != schema["user"]:
        raise TwoTowerError(rerun.format("schema.json's user fields differ from the checkpoint's"))
    item = [Field(**f) for f in trained.get("item", [])][:1] if trained else []
    for side, f in [*(("user", f) for f in fields), *(("item", f) for f in item)]:
        vocab = vocabs.get(side, {}).get(f.name)
        if not isinstance(vocab, list):
            raise TwoTowerError(rerun.format(f"vocabs.json has no {side}.{f.name}"))
        if f.kind != "numeric" and len(vocab) + 1 != f.vocab_size:
            raise TwoTowerError(rerun.format(f"vocabs.json's {side}.{f.name} holds {len(vocab)} "
                                             f"values, the model {f.vocab_size - 1}"))  # fmt: skip
    if len(users) != len(vocabs["user"][fields[0].name]):
        raise TwoTowerError(
            rerun.format(
                f"{len(users)} user profiles for {len(vocabs['user'][fields[0].name])} user ids"
            )
        )
    if len(vocabs.get("item", {}).get("item", [])) != n_items:
        raise TwoTowerError(rerun.format(f"the item vocabulary does not hold the index's "
                                         f"{n_items} items"))  # fmt: skip
    for f in fields:
        values = users[f.name].to_numpy() if f.name in users else None
        if f.kind != "numeric" and values is not None and len(values):
            flat = (
                np.concatenate([np.ravel(v) for v in values]) if f.kind == "multihot" else values
            )
            if flat.min() < 0 or flat.max() >= f.vocab_size:
                raise TwoTowerError(rerun.format(f"users.parquet's {f.name} ids outside its "
                                                 "vocabulary"))  # fmt: skip


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

    @property
    def reloading(self) -> bool:
        return self._lock.locked()

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
