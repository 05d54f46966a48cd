"""The HTTP API of `twotower serve` (FastAPI on uvicorn; docs/serving.md): routes, error
bodies, and the server with its limits.

The event loop only reads, parses small bodies and writes; the model and the index run in
threads (the micro-batcher's one, and `serve.workers` for batches, similar items and large
bodies), so one heavy request cannot stall the other connections.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.settings import ServeSettings
from twotower_cli.serve.batching import MicroBatcher
from twotower_cli.serve.bodies import (
    BatchBody,
    RecommendBody,
    UserBody,
    body_doc,
    field_name,
    parse,
    with_bodies,
)
from twotower_cli.serve.bundle import Bundle, ServeState
from twotower_cli.serve.encoding import RequestError
from twotower_cli.serve.limits import HostCheck, Limits, guarded_http
from twotower_cli.serve.recommend import recommend, similar_items

# a body up to this size is parsed on the event loop (~20 us); a larger one in a worker thread
INLINE_PARSE_BYTES = 16_384


def _json(payload: dict, status: int = 200, headers: dict | None = None) -> Response:
    # json.dumps straight to bytes: FastAPI's generic encoder costs more than the model itself
    return Response(json.dumps(payload), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


def _check_k(k: int, top: int) -> None:
    if not 1 <= k <= top:
        raise RequestError("k", f"must be between 1 and {top}, got {k}")


def _history_note(bundle: Bundle, bodies: list[UserBody]) -> dict:
    if bundle.uses_history() or all(b.history is None for b in bodies):
        return {}
    return {"note": "history ignored: this model has no history input"}


def _answer_batch(bundle: Bundle, raw: bytes, settings: ServeSettings, start: float) -> bytes:
    """/recommend/batch's whole work (parse, check, recommend, encode the answer), run in a
    worker thread: a large answer's JSON must not hold the event loop."""
    body = parse(BatchBody, raw)
    _check_k(body.k, min(settings.max_k, bundle.n_items))
    n = len(body.users)
    if not 1 <= n <= settings.max_batch:
        raise RequestError("users", f"must hold 1 to {settings.max_batch} users, got {n}",
                           status=413 if body.users else 422)  # fmt: skip
    if n * body.k > settings.max_results:
        raise RequestError("users", f"{n} users x k={body.k} = {n * body.k} items, more than "
                           f"serve.max_results ({settings.max_results}) in one answer: send "
                           "fewer users or a smaller k", status=413)  # fmt: skip
    results = recommend(bundle, [b.query() for b in body.users], body.k)
    took = round((time.perf_counter() - start) * 1000, 3)
    # json.dumps holds the GIL from start to end (25,600 items: ~40 ms on an idle core), so
    # the event loop would wait on it even from this thread: one user's items at a time, with
    # Python in between, gives the loop its turns; the bytes are json.dumps' of the whole
    rows = ", ".join('{"items": ' + json.dumps(r) + "}" for r in results)
    rest = json.dumps({"run": bundle.run, "took_ms": took, **_history_note(bundle, body.users)})
    return ('{"results": [' + rows + "], " + rest[1:]).encode()


def validation_reply(exc: RequestValidationError) -> Response:
    """A body that is not JSON (400) or not the route's shape (422)."""
    errors = [f"{field_name(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
    malformed = any(e["type"] == "json_invalid" for e in exc.errors())
    if malformed:
        errors = [f"body: malformed JSON ({exc.errors()[0].get('ctx', {}).get('error', '')})"]
    return _json({"error": errors[0], "errors": errors}, 400 if malformed else 422)


def value_reply(exc: RequestError) -> Response:
    """A value the run cannot answer (an unknown feature value, k out of range, ...)."""
    # a body cut off unread (too large, too slow) leaves the connection unusable
    close = {"connection": "close"} if exc.field == "body" else None
    return _json({"error": str(exc), "field": exc.field}, exc.status, close)


def _add_error_handlers(app: FastAPI) -> None:
    """Every 4xx as `{"error": "<field>: <what is wrong>", ...}` (docs/serving.md)."""

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> Response:
        return validation_reply(exc)

    @app.exception_handler(RequestError)
    async def bad_value(_: Request, exc: RequestError) -> Response:
        return value_reply(exc)


JSON_HEADERS = [(b"content-type", b"application/json")]


class HotPath:
    """ASGI middleware that answers `POST /recommend`, the request a server gets most, itself:
    FastAPI's routing, dependency solving, exception middlewares and Response object cost more
    CPU per request than the model (measured, issue 26.12). Every other request, and the
    route's entry in the OpenAPI document, go through FastAPI; the answers and 4xx bodies are
    the same (`answer_one`, `validation_reply`, `value_reply`)."""

    def __init__(self, app, answer_one) -> None:
        self.app = app
        self.answer_one = answer_one

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/recommend" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client left
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            answer = await self.answer_one(b"".join(chunks), start)
        except RequestValidationError as exc:
            return await validation_reply(exc)(scope, receive, send)
        except RequestError as exc:
            return await value_reply(exc)(scope, receive, send)
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class OffLoop:
    """`await off_loop(fn, *args)`: fn in the pool of `serve.workers` threads; `running` counts
    the calls in it now (the micro-batcher keeps off the event loop while any runs)."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="serve-worker")
        self.running = 0

    async def __call__(self, fn, *args):
        self.running += 1  # on the event loop's thread only: no lock needed
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.running -= 1


async def _answer_one(state: ServeState, settings: ServeSettings, off_loop: OffLoop,
                      batcher: MicroBatcher | None, raw: bytes,
                      start: float) -> bytes:  # fmt: skip
    """/recommend's answer to a body (HotPath calls it before FastAPI routes anything)."""
    if len(raw) <= INLINE_PARSE_BYTES:
        body = parse(RecommendBody, raw)
    else:
        body = await off_loop(parse, RecommendBody, raw)
    _check_k(body.k, min(settings.max_k, state.bundle.n_items))
    if batcher is not None:
        items, bundle = await batcher.submit(body.query(), body.k)
    else:
        bundle = state.bundle  # one reference for the whole request (see ServeState)
        items = (await off_loop(recommend, bundle, [body.query()], body.k))[0]
    took = round((time.perf_counter() - start) * 1000, 3)
    return json.dumps({"items": items, "run": bundle.run, "took_ms": took,
                       **_history_note(bundle, [body])}).encode()  # fmt: skip


def create_app(state: ServeState, settings: ServeSettings) -> FastAPI:
    """The HTTP API over a ServeState (see docs/serving.md)."""
    settings.check_key_env()
    off_loop = OffLoop(settings.workers)
    batcher = None
    if settings.micro_batch:  # small batches run on the loop only while nothing else computes
        busy = lambda: off_loop.running > 0 or state.reloading  # noqa: E731
        batcher = MicroBatcher(state, settings.max_batch, busy_elsewhere=busy)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        off_loop.pool.shutdown(wait=False, cancel_futures=True)
        if batcher is not None:
            batcher.close()

    answer_one = partial(_answer_one, state, settings, off_loop, batcher)

    # FastAPI's built-in OpenTelemetry hooks check the global providers on every request; a
    # deployment that wants traces wraps the app itself
    off = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="twotower", docs_url="/docs", redoc_url=None, telemetry=off,
                  lifespan=lifespan)  # fmt: skip
    _add_error_handlers(app)
    app.add_middleware(HotPath, answer_one=answer_one)  # inside Limits: every limit applies
    app.add_middleware(
        Limits, max_body_bytes=settings.max_body_bytes, timeout_read=settings.timeout_read,
        max_header_bytes=settings.max_header_bytes, api_key=settings.api_key,
        hosts=HostCheck([settings.host, *settings.allowed_hosts]),
    )  # fmt: skip

    @app.post("/recommend", openapi_extra=body_doc(RecommendBody))
    async def recommend_one(request: Request) -> Response:
        # the OpenAPI document's entry: HotPath answers these requests before routing
        start = time.perf_counter()
        return Response(await answer_one(await request.body(), start),
                        media_type="application/json")  # fmt: skip

    @app.post("/recommend/batch", openapi_extra=body_doc(BatchBody))
    async def recommend_many(request: Request) -> Response:
        start = time.perf_counter()
        raw = await request.body()
        answer = await off_loop(_answer_batch, state.bundle, raw, settings, start)
        return Response(answer, media_type="application/json")

    @app.get("/items/{item_id}/similar")
    async def similar(item_id: str, k: int = Query(20)) -> Response:
        start = time.perf_counter()
        bundle = state.bundle
        _check_k(k, min(settings.max_k, bundle.n_items - 1))
        items = await off_loop(similar_items, bundle, item_id, k)
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

    app.openapi = with_bodies(app)
    return app


def uvicorn_config(app: FastAPI, settings: ServeSettings):
    """uvicorn's settings from ours: the guarded HTTP protocol, keep-alive and connection
    limits (docs/serving.md, "Limits")."""
    import uvicorn

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=False, http=guarded_http(settings.timeout_read, settings.max_header_bytes),
        timeout_keep_alive=settings.timeout_keep_alive,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5,
    )  # fmt: skip


def listen(settings: ServeSettings) -> socket.socket:
    """A socket listening on serve.host:serve.port, or a one-line error naming the port: taken
    before the run loads and before the server says it is serving."""
    settings.check_key_env()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: no TIME_WAIT wait
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)  # connections queue from here on; uvicorn accepts them
    except OSError as err:
        sock.close()
        why = "another process listens there" if err.errno == errno.EADDRINUSE else err.strerror
        raise TwoTowerError(f"serve: cannot listen on {settings.host} port {settings.port} "
                            f"(serve.port): {why or err}") from None  # fmt: skip
    return sock


def run_server(
    state: ServeState, settings: ServeSettings, sock: socket.socket | None = None
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the run's artifacts in a background thread.
    `sock`: from `listen` (else taken here, before the server says it is serving)."""
    import faiss
    import torch
    import uvicorn

    sock = sock or listen(settings)
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
    try:
        uvicorn.Server(uvicorn_config(create_app(state, settings), settings)).run([sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on (as uvicorn.run)
        pass
    finally:
        sock.close()
