"""Online serving (`twotower serve`): the user tower runs per request, the faiss index returns
the top-k.

A `Bundle` is everything one run serves (model, encoder, index, item ids, stored profiles and
seen items), loaded once; `ServeState` holds the current bundle and swaps in a freshly loaded one
on SIGHUP. A request takes the bundle reference once, so requests in flight finish on the bundle
they started with, and a bundle that fails to load is never served.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictInt,
    ValidationError,
)

from twotower_cli.artifacts import read_manifest, require, seen_rows
from twotower_cli.data.split import user_time_order
from twotower_cli.data.tables import Field, feature_tensors, load_schema
from twotower_cli.errors import TwoTowerError
from twotower_cli.keys import is_member, pair_keys

log = logging.getLogger("twotower.serve")
# the user tower's optional behaviour input (the item ids a user interacted with, most recent
# last); a model that reads it has `history_len` > 0 (`model.history: true`)
HISTORY = "history"


def history_length(model: torch.nn.Module) -> int:
    return int(getattr(model, "history_len", 0) or 0)


class RequestError(ValueError):
    """A bad request value: answered with a 4xx whose message names `field`."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


@dataclass
class ServeDirs:
    """Where a run's serving inputs live (the stage dirs of the same config)."""

    preprocess_dir: Path
    train_dir: Path
    embed_dir: Path
    index_dir: Path
    run: str
    nprobe: int = 16
    ef_search: int = 128
    runtime: str = "auto"  # who runs the user tower: see fast_user_tower


@dataclass
class UserQuery:
    """One parsed request: raw user values, optional history, extra exclusions."""

    user: dict[str, Any]
    history: list | None = None
    exclude: tuple = ()
    exclude_seen: bool = True


def _lookup(vocab: list) -> dict:
    """Raw value -> id (position + 1); the string form of every value maps too, see _code."""
    out = {str(v): i + 1 for i, v in enumerate(vocab)}
    out.update({v: i + 1 for i, v in enumerate(vocab)})
    return out


def _code(lookup: dict, value: Any) -> int:
    """A raw value's id; 0 when unseen. 7 finds "7" and the reverse (JSON clients differ)."""
    i = lookup.get(value)
    return i if i is not None else lookup.get(str(value), 0)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _csr(frame: pd.DataFrame, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user item lists, oldest first: items[ptr[u]:ptr[u + 1]] for dense user id u."""
    frame = frame.take(user_time_order(frame))
    ptr = np.zeros(n_users + 2, dtype=np.int64)
    np.cumsum(np.bincount(frame["user"].to_numpy(), minlength=n_users + 1), out=ptr[1:])
    return ptr, frame["item"].to_numpy(np.int64)


class UserEncoder:
    """Raw request values -> the user tower's feature tensors, encoded as `preprocess` did:
    vocabulary ids (0 = unknown or missing) and numeric values scaled by the saved mean/std.
    A known `user_id` brings its stored profile; values given in the request replace it."""

    def __init__(self, fields: list[Field], vocabs: dict, users: pd.DataFrame,
                 item_vocab: list, history_len: int = 0) -> None:  # fmt: skip
        self.fields = {f.name: f for f in fields}
        self.id_field = fields[0].name  # encode_side puts the id field first
        self.user_ids = _lookup(vocabs[self.id_field])
        self.lookups = {f.name: _lookup(vocabs[f.name]) for f in fields
                        if f.kind != "numeric" and f.name != self.id_field}  # fmt: skip
        self.scaling = {f.name: tuple(vocabs[f.name]) for f in fields if f.kind == "numeric"}
        # numpy: gathering one row is ~1 us there, ~20 us as a torch index op
        self.profiles = {n: t.numpy() for n, t in feature_tensors(users, fields).items()}
        self.item_ids = _lookup(item_vocab)
        self.history_len = history_len
        self.accepted = {"user_id", *self.lookups, *self.scaling}

    def dense_user(self, user: dict) -> int:
        raw = user.get("user_id")
        if raw is None:
            return 0
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise RequestError("user.user_id", f"expected a string or an integer, got "
                               f"{type(raw).__name__}")  # fmt: skip
        return _code(self.user_ids, raw)

    def dense_items(self, raw: list) -> np.ndarray:
        """Raw item ids -> dense ids; unknown ones are dropped (they cannot be excluded or
        embedded anyway)."""
        ids = np.fromiter((_code(self.item_ids, v) for v in raw), np.int64, len(raw))
        return ids[ids > 0]

    def encode(self, queries: list[UserQuery], stored_history) -> dict[str, torch.Tensor]:
        """Feature tensors for a batch of queries: stored profiles, then request overrides."""
        dense = np.fromiter((self.dense_user(q.user) for q in queries), np.int64, len(queries))
        feats = {name: torch.from_numpy(t[dense]) for name, t in self.profiles.items()}
        for row, q in enumerate(queries):
            for name, value in q.user.items():
                if name not in self.accepted:
                    known = ", ".join(sorted(self.accepted))
                    raise RequestError(f"user.{name}", f"unknown feature; known: {known}")
                if name != "user_id":
                    feats[name][row] = self._value(self.fields[name], value)
        if self.history_len:
            feats[HISTORY] = self._history(queries, dense, stored_history)
        return feats

    def _value(self, f: Field, value: Any):
        where = f"user.{f.name}"
        if f.kind == "numeric":
            if value is None:
                return 0.0  # missing = the mean, as in preprocess
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(where, f"expected a number, got {type(value).__name__}")
            mean, std = self.scaling[f.name]
            return (float(value) - mean) / std
        lookup = self.lookups[f.name]
        if f.kind == "multihot":
            if not isinstance(value, list) or not all(_scalar(v) for v in value):
                raise RequestError(where, "expected a list of strings or numbers")
            ids = [i for i in (_code(lookup, v) for v in value) if i][: f.max_len]
            return torch.tensor(ids + [0] * (f.max_len - len(ids)), dtype=torch.int64)
        if not _scalar(value):
            raise RequestError(where, f"expected one value, got {type(value).__name__}")
        return _code(lookup, value)

    def _history(self, queries: list[UserQuery], dense: np.ndarray, stored) -> torch.Tensor:
        """[batch, history_len] dense item ids: the latest history_len, most recent last,
        left-padded with 0 (the layout training uses); the request's history replaces the
        stored one."""
        ptr, items = stored
        out = np.zeros((len(queries), self.history_len), dtype=np.int64)
        for row, q in enumerate(queries):
            if q.history is not None:
                ids = self.dense_items(q.history)
            else:
                ids = items[ptr[dense[row]] : ptr[dense[row] + 1]]
            ids = ids[-self.history_len :]
            out[row, self.history_len - len(ids) :] = ids
        return torch.from_numpy(out)


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


def load_bundle(dirs: ServeDirs, load_model: Callable[[Path], tuple]) -> Bundle:
    """Load a run's serving inputs. `load_model(train_dir) -> (model, checkpoint)` rebuilds the
    model (the stage passes the same loader `embed` uses)."""
    import faiss

    from twotower_cli.retrieval import set_search_params

    prep_dir = require(dirs.preprocess_dir, "preprocess")
    train_dir = require(dirs.train_dir, "train")
    embed_dir = require(dirs.embed_dir, "embed")
    index_dir = require(dirs.index_dir, "index")
    model, _ = load_model(train_dir)
    schema = load_schema(prep_dir)
    vocabs = json.loads((prep_dir / "vocabs.json").read_text())
    history_len = history_length(model)
    users = pd.read_parquet(prep_dir / "users.parquet")
    encoder = UserEncoder(schema["user"], vocabs["user"], users, vocabs["item"]["item"],
                          history_len)  # fmt: skip
    index = faiss.read_index(str(index_dir / "items.faiss"))
    set_search_params(index, dirs.nprobe, dirs.ef_search)
    item_ids = np.load(embed_dir / "item_ids.npy")
    item_vectors = np.ascontiguousarray(np.load(embed_dir / "item_vectors.npy"), np.float32)
    # faiss row i must be dense item id i + 1, as embed wrote it
    if not np.array_equal(item_ids, np.arange(1, index.ntotal + 1)):
        raise TwoTowerError(f"{index_dir}: index does not match {embed_dir}; rerun index")
    item_raw = np.array([None, *vocabs["item"]["item"]], dtype=object)
    seen = seen_rows(prep_dir)
    sources = {name: str(d) for name, d in (("train", train_dir), ("index", index_dir))}
    sources["trained"] = read_manifest(train_dir).get("figures", {})
    seen_csr = _csr(seen, len(users))
    example = encoder.encode([UserQuery({}), UserQuery({"user_id": vocabs["user"]["user"][0]})],
                             seen_csr)  # fmt: skip
    tower, names, runtime = fast_user_tower(model.eval(), example, dirs.runtime)
    sources["runtime"] = runtime
    return Bundle(dirs.run, model, encoder, index, item_raw, item_vectors, seen_csr,
                  time.time(), sources, tower, names)  # fmt: skip


RUNTIMES = ("auto", "onnxruntime", "torchscript", "eager")


def _onnx_tower(model: torch.nn.Module, example: dict, names: list[str]) -> Callable:
    import onnxruntime as ort

    from twotower_cli.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_tower.onnx"
        export_onnx(model, example, names, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda *ts: session.run(None, {n: t.numpy() for n, t in zip(names, ts, strict=True)})[0]


def _traced_tower(model: torch.nn.Module, example: dict, names: list[str]) -> Callable:
    from twotower_cli.export import UserTower

    args = tuple(example[n] for n in names)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about Python values
        traced = torch.jit.freeze(torch.jit.trace(UserTower(model, names).eval(), args))
    return lambda *ts: traced(*ts).numpy()


def fast_user_tower(model: torch.nn.Module, example: dict[str, torch.Tensor],
                    runtime: str = "auto") -> tuple[Callable, list[str], str]:  # fmt: skip
    """The user tower as a function of positional tensors returning numpy vectors, run by
    onnxruntime, TorchScript or eager PyTorch. A single request's forward pass is mostly fixed
    per-call overhead: measured here per call (batch 1) eager ~390 us, TorchScript ~190 us,
    onnxruntime ~80 us. `auto` takes the first that loads and reproduces the eager vectors to
    1e-5 (the export test's tolerance) on two batch sizes."""
    from twotower_cli.export import UserTower

    if runtime not in RUNTIMES:
        raise TwoTowerError(f"serve.runtime: {runtime!r} not in {RUNTIMES}")
    names = list(example)
    eager_tower = UserTower(model, names).eval()

    def eager(*ts: torch.Tensor) -> np.ndarray:
        return eager_tower(*ts).numpy()

    builders = {"onnxruntime": _onnx_tower, "torchscript": _traced_tower}
    order = list(builders) if runtime == "auto" else [runtime] if runtime != "eager" else []
    args = tuple(example[n] for n in names)
    with torch.inference_mode():
        want = eager(*args)
    for name in order:
        try:
            fn = builders[name](model, example, names)
            with torch.inference_mode():
                ok = np.allclose(fn(*args), want, rtol=0, atol=1e-5) and np.allclose(
                    fn(*(a[1:] for a in args)), want[1:], rtol=0, atol=1e-5)  # fmt: skip
        except Exception as err:  # noqa: BLE001 -- a runtime that cannot run it is skipped
            log.warning("user tower on %s failed (%s)", name, err)
            continue
        if ok:
            return fn, names, name
        log.warning("user tower on %s differs from PyTorch; not used", name)
    return eager, names, "eager"


def _top(D: np.ndarray, I: np.ndarray, exclude_keys: np.ndarray, n_items: int, k: int):
    """First k results per row that are neither missing (-1) nor excluded for that row (keys =
    row * (n_items + 1) + item), in index order: the same rule as evaluate's drop_excluded."""
    items = np.where(I >= 0, I + 1, -1)
    rows = np.arange(len(items))[:, None]
    bad = (items < 0) | is_member(pair_keys(rows, items, n_items), exclude_keys)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    keep = ~np.take_along_axis(bad, order, axis=1)
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(D, order, axis=1), keep


def recommend(bundle: Bundle, queries: list[UserQuery], k: int | list[int]) -> list[list[dict]]:
    """Top-k items per query (k: one for all or one per query): user vectors from the tower,
    searched in the index, each user's seen items (train+valid, if asked) and requested
    exclusions dropped."""
    ks = [k] * len(queries) if isinstance(k, int) else k
    k = max(ks)
    enc = bundle.encoder
    u = bundle.user_vectors(enc.encode(queries, bundle.seen))
    ptr, seen_items = bundle.seen
    excluded = []
    for q in queries:
        dense = enc.dense_user(q.user)
        items = enc.dense_items(list(q.exclude)) if q.exclude else np.zeros(0, np.int64)
        if q.exclude_seen and dense:
            items = np.concatenate([items, seen_items[ptr[dense] : ptr[dense + 1]]])
        excluded.append(items)
    n = bundle.n_items
    # deep enough that k items survive the exclusions: the rule evaluate uses
    depth = min(n, k + max(len(e) for e in excluded))
    D, I = bundle.index.search(u, depth)
    if len(queries) == 1:  # the common case, without the batch bookkeeping
        items = I[0] + 1
        mask = np.zeros(n + 1, dtype=bool)  # cheaper than np.isin at this size
        mask[excluded[0]] = True
        keep = (I[0] >= 0) & ~mask[items]
        return [_items(bundle, items[keep][:k], D[0][keep][:k])]
    keys = [pair_keys(np.full(len(e), row), e, n) for row, e in enumerate(excluded)]
    items, scores, keep = _top(D, I, np.unique(np.concatenate(keys)), n, k)
    return [_items(bundle, r[m][:kq], d[m][:kq])
            for r, d, m, kq in zip(items, scores, keep, ks, strict=True)]  # fmt: skip


def _items(bundle: Bundle, dense: np.ndarray, scores: np.ndarray) -> list[dict]:
    raw = bundle.item_raw[dense].tolist()
    return [{"item_id": i, "score": s} for i, s in zip(raw, scores.tolist(), strict=True)]


def similar_items(bundle: Bundle, raw_item: str | int, k: int) -> list[dict]:
    """The k nearest items to one item's vector (itself left out)."""
    dense = _code(bundle.encoder.item_ids, raw_item)
    if not dense:
        raise RequestError("item_id", f"unknown item {raw_item!r}", status=404)
    q = bundle.item_vectors[dense - 1 : dense]
    D, I = bundle.index.search(q, min(bundle.n_items, k + 1))
    key = pair_keys(np.zeros(1), np.array([dense]), bundle.n_items)
    items, scores, keep = _top(D, I, key, bundle.n_items, k)
    return _items(bundle, items[0][keep[0]], scores[0][keep[0]])


class MicroBatcher:
    """Single /recommend requests that arrive together share one forward pass and one search.

    A request queues its query and awaits a future; the first one queued schedules `_flush` on
    the event loop's next turn, which answers every query queued by then. A lone request waits
    for nothing; under load the tower's fixed per-call cost is paid once per turn, not once per
    request (TF-Serving and Triton call this dynamic batching)."""

    def __init__(self, state: ServeState, max_batch: int) -> None:
        self.state = state
        self.max_batch = max_batch
        self.pending: list = []

    def submit(self, query: UserQuery, k: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self.pending:
            loop.call_soon(self._flush)
        fut = loop.create_future()
        self.pending.append((query, k, fut))
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        bundle = self.state.bundle  # the whole turn answers from one bundle
        for start in range(0, len(pending), self.max_batch):
            chunk = pending[start : start + self.max_batch]
            try:
                results = recommend(bundle, [q for q, _, _ in chunk], [k for _, k, _ in chunk])
            except Exception:  # noqa: BLE001 -- e.g. one bad query: answer each alone, so
                results = None  # only the bad one fails
            for row, (query, k, fut) in enumerate(chunk):
                if fut.done():  # the client went away
                    continue
                try:
                    items = (
                        results[row] if results is not None else recommend(bundle, [query], k)[0]
                    )
                    fut.set_result((items, bundle))
                except Exception as err:  # noqa: BLE001 -- delivered to the request's handler
                    fut.set_exception(err)


class ServeState:
    """The bundle being served and how to load a fresh one. `reload()` loads aside and swaps
    one reference: a request that already holds the old bundle finishes on it."""

    def __init__(self, loader: Callable[[], Bundle]) -> None:
        self.loader = loader
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
                self.last_reload = {"ok": False, "at": time.time(), "error": str(err)}
                return False
            self.bundle = fresh
            self.generation += 1
            self.last_reload = {"ok": True, "at": fresh.loaded_at}
            log.info("reloaded: generation %d", self.generation)
            return True


@dataclass
class ServeSettings:
    """`conf/serve/default.yaml`: where to listen, the request limits, how to run the tower."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 1000
    max_batch: int = 256
    # answer concurrent single requests with one forward pass per event-loop turn
    micro_batch: bool = True
    # one request is a tiny forward pass: more torch/faiss threads only add hand-off cost
    threads: int = 1
    runtime: str = "auto"  # who runs the user tower (fast_user_tower); read by load_bundle
    log_level: str = "warning"
    export_dynamo: bool = False  # `twotower export`'s ONNX exporter (export.export_onnx)


def _item_id(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("an item id is a string or an integer")
    return value


ItemId = Annotated[Any, AfterValidator(_item_id)]


class UserBody(BaseModel):
    """One user: raw feature values (`user_id` alone is enough for a known user)."""

    model_config = ConfigDict(extra="forbid")
    # raw values, checked against the run's features by UserEncoder (messages name the feature)
    user: dict[str, Any]
    history: list[ItemId] | None = None
    exclude: list[ItemId] = []
    exclude_seen: StrictBool = True

    def query(self) -> UserQuery:
        return UserQuery(self.user, self.history, tuple(self.exclude), self.exclude_seen)


class RecommendBody(UserBody):
    k: StrictInt = 20


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[UserBody]
    k: StrictInt = 20


def _json(payload: dict, status: int = 200) -> Response:
    # json.dumps straight to bytes: FastAPI's generic encoder costs more than the model itself
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """The request body parsed and validated in one pass by pydantic-core (FastAPI's body
    dependency decodes the JSON first, then validates). Errors take FastAPI's route
    (RequestValidationError), so every 4xx looks the same."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        raise RequestValidationError(errors) from None


_BODY_MODELS: dict[str, dict] = {}


def _body_doc(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that parses its body itself; the model's schema (and
    the ones it nests) join the document's components in `_openapi`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _BODY_MODELS.update(schema.pop("$defs", {}))
    _BODY_MODELS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI) -> Callable[[], dict]:
    build = app.openapi

    def openapi() -> dict:
        doc = build()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(_BODY_MODELS)
        return doc

    return openapi


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else loc
    return ".".join(str(p) for p in parts) or str(loc[0] if loc else "body")


def create_app(state: ServeState, settings: ServeSettings) -> FastAPI:
    """The HTTP API over a ServeState (see docs/serving.md)."""
    # FastAPI's built-in OpenTelemetry hooks check the global providers on every request; a
    # deployment that wants traces wraps the app itself
    off = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="twotower", docs_url="/docs", redoc_url=None, telemetry=off)
    batcher = MicroBatcher(state, settings.max_batch) if settings.micro_batch else None

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> Response:
        errors = [f"{_field(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        if malformed:
            errors = [f"body: malformed JSON ({exc.errors()[0].get('ctx', {}).get('error', '')})"]
        return _json({"error": errors[0], "errors": errors}, 400 if malformed else 422)

    @app.exception_handler(RequestError)
    async def bad_value(_: Request, exc: RequestError) -> Response:
        return _json({"error": str(exc), "field": exc.field}, exc.status)

    def check_k(k: int, bundle: Bundle) -> None:
        top = min(settings.max_k, bundle.n_items)
        if not 1 <= k <= top:
            raise RequestError("k", f"must be between 1 and {top}, got {k}")

    def history_note(bundle: Bundle, bodies: list[UserBody]) -> dict:
        if bundle.uses_history() or all(b.history is None for b in bodies):
            return {}
        return {"note": "history ignored: this model has no history input"}

    @app.post("/recommend", openapi_extra=_body_doc(RecommendBody))
    async def recommend_one(request: Request) -> Response:
        start = time.perf_counter()
        body = _parse(RecommendBody, await request.body())
        check_k(body.k, state.bundle)
        if batcher is not None:
            items, bundle = await batcher.submit(body.query(), body.k)
        else:
            bundle = state.bundle  # one reference for the whole request (see ServeState)
            items = recommend(bundle, [body.query()], body.k)[0]
        took = round((time.perf_counter() - start) * 1000, 3)
        return _json({"items": items, "run": bundle.run, "took_ms": took,
                      **history_note(bundle, [body])})  # fmt: skip

    @app.post("/recommend/batch", openapi_extra=_body_doc(BatchBody))
    async def recommend_many(request: Request) -> Response:
        start = time.perf_counter()
        body = _parse(BatchBody, await request.body())
        bundle = state.bundle
        check_k(body.k, bundle)
        if not 1 <= len(body.users) <= settings.max_batch:
            raise RequestError(
                "users", f"must hold 1 to {settings.max_batch} users, got {len(body.users)}",
                status=413 if body.users else 422,
            )  # fmt: skip
        results = recommend(bundle, [b.query() for b in body.users], body.k)
        took = round((time.perf_counter() - start) * 1000, 3)
        return _json({"results": [{"items": r} for r in results], "run": bundle.run,
                      "took_ms": took, **history_note(bundle, body.users)})  # fmt: skip

    @app.get("/items/{item_id}/similar")
    async def similar(item_id: str, k: int = Query(20)) -> Response:
        start = time.perf_counter()
        bundle = state.bundle
        top = min(settings.max_k, bundle.n_items - 1)
        if not 1 <= k <= top:
            raise RequestError("k", f"must be between 1 and {top}, got {k}")
        items = similar_items(bundle, item_id, k)
        took = round((time.perf_counter() - start) * 1000, 3)
        return _json({"item_id": item_id, "items": items, "run": bundle.run, "took_ms": took})

    @app.get("/health")
    async def health() -> Response:
        bundle = state.bundle
        return _json({
            "status": "ok", "run": bundle.run, "generation": state.generation,
            "items": bundle.n_items, "users": bundle.n_users,
            "dim": int(bundle.index.d), "index": type(bundle.index).__name__,
            "history_input": bundle.uses_history(), "loaded_at": bundle.loaded_at,
            "last_reload": state.last_reload, "sources": bundle.sources,
        })  # fmt: skip

    app.openapi = _openapi(app)
    return app


def run_server(state: ServeState, settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the run's artifacts in a background thread."""
    import faiss
    import uvicorn

    torch.set_num_threads(settings.threads)
    faiss.omp_set_num_threads(settings.threads)

    def on_hup(*_: object) -> None:
        threading.Thread(target=state.reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    # everything loaded so far lives as long as the server: keep it out of the cyclic GC, whose
    # full collections over it stalled every request in flight for ~110 ms (measured)
    gc.collect()
    gc.freeze()
    print(f"serve: {state.bundle.run} ({state.bundle.n_items} items) on "
          f"http://{settings.host}:{settings.port}; SIGHUP reloads", flush=True)  # fmt: skip
    uvicorn.run(create_app(state, settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False)  # fmt: skip
