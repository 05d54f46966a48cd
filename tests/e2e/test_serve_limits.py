"""`twotower serve`'s limits (issue 18): body size, API key, read deadlines, request heads,
settings checked before loading, no absolute paths in /health, heavy requests off the event
loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import uvicorn
from conftest import SMALL, twotower
from fastapi.testclient import TestClient
from helpers import local_client

from twotower_cli import serve
from twotower_cli.artifacts.checkpoint import load_dir as _load_model
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.tools.loadtest import drive, request_bodies

RUN = ("synthetic", "sample", "inbatch", "dssm")


def _dirs(out: Path) -> serve.ServeDirs:
    return serve.ServeDirs(Layout.of_run(out.joinpath(*RUN), out))


@pytest.fixture(scope="module")
def state(small_run: Path) -> serve.ServeState:
    return serve.ServeState(partial(serve.load_bundle, _dirs(small_run), _load_model), small_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(state: serve.ServeState, **settings):
    """The real uvicorn server (guarded protocol, keep-alive, limits) in a thread."""
    settings = serve.ServeSettings(port=_free_port(), **settings)
    server = uvicorn.Server(serve.uvicorn_config(serve.create_app(state, settings), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    try:
        yield settings.port
    finally:
        server.should_exit = True
        thread.join(10)


def _raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes on a fresh connection; (everything read until the server closed, the
    seconds that took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.monotonic()
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got, time.monotonic() - start


USER = json.dumps({"user": {"age": 1}, "k": 3}).encode()


def test_api_key_guards_every_route_but_health(state):
    client = local_client(serve.create_app(state, serve.ServeSettings(api_key="s3cret")))
    assert client.post("/recommend", content=USER).status_code == 401
    resp = client.post("/recommend", content=USER, headers={"authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["error"].startswith("authorization:")
    assert resp.headers["www-authenticate"] == "Bearer" and resp.headers["connection"] == "close"
    assert client.get("/items/1/similar").status_code == 401
    assert client.get("/openapi.json").status_code == 401
    ok = {"authorization": "Bearer s3cret"}
    assert client.post("/recommend", content=USER, headers=ok).status_code == 200
    assert (
        client.post("/recommend", content=USER, headers={"x-api-key": "s3cret"}).status_code == 200
    )
    assert client.get("/openapi.json", headers=ok).status_code == 200
    assert client.get("/health").status_code == 200
    # without a key configured nothing is asked for
    open_client = local_client(serve.create_app(state, serve.ServeSettings()))
    assert open_client.post("/recommend", content=USER).status_code == 200


def test_health_shows_the_run_and_relative_dirs_only(state, small_run):
    h = local_client(serve.create_app(state, serve.ServeSettings())).get("/health").json()
    assert str(small_run) not in json.dumps(h) and str(Path.home()) not in json.dumps(h)
    assert h["run"] == "dssm"
    assert h["sources"]["train"] == "synthetic/sample/inbatch/dssm/train"
    assert h["sources"]["preprocess"] == "synthetic/preprocess"


def test_failed_reload_keeps_the_old_bundle_and_health_says_why(state, small_run):
    index_dir = small_run.joinpath(*RUN, "index")
    calls = iter([state.bundle])

    def loader():
        for bundle in calls:
            return bundle
        raise TwoTowerError(f"{index_dir}: missing; run `twotower index` first")

    flaky = serve.ServeState(loader, small_run)
    client = local_client(serve.create_app(flaky, serve.ServeSettings()))
    before = client.post("/recommend", content=USER).json()["items"]
    assert flaky.reload() is False
    h = client.get("/health").json()
    assert h["generation"] == 1 and h["last_reload"]["ok"] is False
    assert h["last_reload"]["error"] == (
        "synthetic/sample/inbatch/dssm/index: missing; run `twotower index` first"
    )
    assert client.post("/recommend", content=USER).json()["items"] == before


def test_body_over_the_limit_is_413_by_content_length(state):
    client = local_client(serve.create_app(state, serve.ServeSettings(max_body_bytes=200)))
    big = json.dumps({"user": {"age": 1}, "exclude": list(range(100))}).encode()
    assert len(big) > 200
    resp = client.post("/recommend", content=big)
    assert resp.status_code == 413 and resp.headers["connection"] == "close"
    assert (
        resp.json()["error"]
        == f"body: larger than 200 bytes (serve.max_body_bytes), got {len(big)}"
    )
    assert client.post("/recommend", content=USER).status_code == 200  # 36 bytes: fine


def _asgi_post(app, chunks, complete: bool = True, path: str = "/recommend",
               headers=()) -> tuple[int, dict, int]:  # fmt: skip
    """POST a body without Content-Length (chunked) straight to the ASGI app; (status, json,
    chunks the app pulled). complete=False: the client stalls after its last chunk."""
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1],
                    "more_body": pulled < len(chunks) or not complete}  # fmt: skip
        await asyncio.sleep(3600)  # a client that stopped sending

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"transfer-encoding", b"chunked"),
                         (b"content-type", b"application/json"), *headers], "scheme": "http",
             "server": ("test", 80), "client": ("test", 1), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]), pulled


def test_streamed_body_is_counted_and_cut_at_the_limit(state):
    app = serve.create_app(state, serve.ServeSettings(max_body_bytes=1000))
    # 30 chunks of 100 bytes would be 3,000: the app stops pulling at the 11th (1,100 > 1,000)
    status, body, pulled = _asgi_post(app, [b" " * 100] * 30)
    assert (status, pulled) == (413, 11)
    assert body["error"] == "body: larger than 1000 bytes (serve.max_body_bytes)"
    # exactly the limit in 10 chunks (9 x 96 blanks + 136 bytes = 1,000) is read and answered
    last = b" " * (136 - len(USER)) + USER
    status, body, pulled = _asgi_post(app, [b" " * 96] * 9 + [last])
    assert (status, pulled) == (200, 10) and len(body["items"]) == 3, body


def test_body_that_does_not_arrive_in_time_is_408(state):
    app = serve.create_app(state, serve.ServeSettings(timeout_read=0.3))
    start = time.monotonic()
    status, body, pulled = _asgi_post(app, [b'{"user": '], complete=False)
    assert status == 408 and pulled == 1 and time.monotonic() - start < 3
    assert body["error"] == "body: not received within 0.3 s (serve.timeout_read)"


def test_server_closes_silent_slow_and_oversized_request_heads(state):
    with live_server(state, timeout_read=1.0, timeout_keep_alive=0.2,
                     max_header_bytes=2048) as port:  # fmt: skip
        # connected and silent: closed after timeout_read (uvicorn alone keeps it forever)
        got, took = _raw(port, b"")
        assert got == b"" and 0.9 < took < 3
        # a head that trickles in and never ends: closed too
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            start = time.monotonic()
            s.sendall(b"GET /health HTTP/1.1\r\n")
            for _ in range(10):
                time.sleep(0.1)
                try:
                    s.sendall(b"x-slow: 1\r\n")
                except OSError:
                    break
            assert s.recv(100) == b"" and time.monotonic() - start < 3
        # a head over max_header_bytes: 431
        got, _ = _raw(port, b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 431")
        # an ordinary keep-alive request is answered, then the idle connection is closed by
        # the keep-alive timer (0.2 s), well before the next head's deadline (1 s)
        got, took = _raw(port, b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200") and b'"run": "dssm"' in got
        assert 0.2 <= took < 0.9


@pytest.mark.slow
def test_30_mb_body_gets_413_unread_while_other_clients_stay_fast(state, small_run):
    """A client announcing 30 MB gets 413 after its headers, long before it could send them,
    and a slow batch request (0.5 s in the tower) runs off the event loop: other clients'
    p99 stays under 50 ms meanwhile."""
    bundle = serve.load_bundle(_dirs(small_run), _load_model)
    fast = bundle.tower

    def slow_for_big_batches(*inputs):
        if len(inputs[0]) >= 100:
            time.sleep(0.5)  # a heavy forward pass; like onnxruntime it releases the GIL
        return fast(*inputs)

    bundle.tower = slow_for_big_batches
    slow_state = serve.ServeState(lambda: bundle)
    stop, heavy = threading.Event(), {"slow": 0, "413": 0, "sent_before_413": []}

    def heavy_client(port: int) -> None:
        big = json.dumps({"users": [{"user": {"age": 1}}] * 200, "k": 5}).encode()
        head = (
            b"POST /recommend/batch HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n"
            b"content-type: application/json\r\n"
        )
        while not stop.is_set():
            got, took = _raw(port, head + b"content-length: %d\r\n\r\n" % len(big) + big)
            heavy["slow"] += got.startswith(b"HTTP/1.1 200") and took >= 0.5
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head + b"content-length: 30000000\r\n\r\n")
                sent = 0
                try:
                    while sent < 30_000_000 and not s.recv(
                        1, socket.MSG_PEEK | socket.MSG_DONTWAIT
                    ):
                        s.sendall(b" " * 65536)
                        sent += 65536
                except BlockingIOError:
                    pass
                except OSError:  # the server closed after answering
                    pass
                heavy["sent_before_413"].append(sent)
                heavy["413"] += s.recv(12) == b"HTTP/1.1 413"

    prep = small_run / "synthetic" / "preprocess"
    with live_server(slow_state) as port:
        worker = threading.Thread(target=heavy_client, args=(port,), daemon=True)
        worker.start()
        time.sleep(0.2)
        # 8 clients for 3 s, while the heavy client sends its slow batches and 30 MB bodies
        bodies = request_bodies(prep, 50_000, cold_every=8, k=10, seed=0)
        r = asyncio.run(drive(port, bodies, concurrency=8, max_seconds=3))
        stop.set()
        worker.join(10)
    assert heavy["slow"] >= 3 and heavy["413"] >= 3, heavy
    assert max(heavy["sent_before_413"]) < 30_000_000
    assert r["errors"] == 0 and r["requests"] > 300
    assert r["p99_ms"] < 50, r


def test_load_test_client_sends_the_api_key(state, small_run):
    bodies = request_bodies(small_run / "synthetic" / "preprocess", 40, cold_every=8, k=5, seed=0)
    with live_server(state, api_key="k3y") as port:
        keyed = asyncio.run(drive(port, bodies, concurrency=4, max_seconds=20, api_key="k3y"))
        bare = asyncio.run(drive(port, bodies[:8], concurrency=4, max_seconds=20))
    assert keyed["requests"] == 40 and keyed["errors"] == 0
    # each client's first request is a 401 that closes its connection, which ends the client
    assert bare["requests"] == 4 and bare["errors"] >= 4


def test_empty_api_key_variable_refuses_to_serve(monkeypatch, state, tmp_path, capsys):
    # issue 26.11: TWOTOWER_API_KEY="" (a secret that failed to load) turned auth off silently
    monkeypatch.setenv("TWOTOWER_API_KEY", "")
    with pytest.raises(TwoTowerError, match=r"^\$TWOTOWER_API_KEY is set but empty"):
        serve.create_app(state, serve.ServeSettings())
    assert twotower("serve", *SMALL, f"paths.out={tmp_path}") == 2  # before anything loads
    err = capsys.readouterr().err.strip()
    assert "TWOTOWER_API_KEY is set but empty" in err and len(err.splitlines()) == 1, err
    # other stages do not serve: the variable is none of their business
    monkeypatch.setenv("TWOTOWER_API_KEY", "  ")
    assert twotower("preprocess", *SMALL, f"paths.out={tmp_path}", "--cfg", "job") == 0


def test_post_bodies_must_be_declared_json(state):
    # issue 26.11: a cross-site form or fetch() can POST text/plain without a CORS preflight
    client = local_client(serve.create_app(state, serve.ServeSettings()))
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        resp = client.post("/recommend", content=USER, headers={"content-type": kind})
        assert resp.status_code == 415, kind
        assert resp.json()["error"] == f"content-type: must be application/json, got {kind!r}"
    bare = TestClient(serve.create_app(state, serve.ServeSettings()), base_url="http://localhost")
    assert bare.post("/recommend", content=USER).status_code == 415  # no content-type at all
    resp = client.post("/recommend", content=USER,
                       headers={"content-type": "Application/JSON; charset=utf-8"})  # fmt: skip
    assert resp.status_code == 200


def test_host_header_must_name_this_server(state):
    # issue 26.11: with no key, a page at evil.example that rebinds its name to 127.0.0.1 could
    # read the API (DNS rebinding); the browser still sends `Host: evil.example`
    app = serve.create_app(state, serve.ServeSettings())

    def status(host: str, app=app) -> int:
        return TestClient(app, base_url=f"http://{host}").post("/recommend", json={"user": {}}
                                                              ).status_code  # fmt: skip

    assert status("evil.example:8000") == 421 and status("evil.example") == 421
    resp = TestClient(app, base_url="http://evil.example").get("/health")
    assert resp.status_code == 421
    assert resp.json()["error"] == ("host: 'evil.example' is not a name of this server; add it "
                                    "to serve.allowed_hosts")  # fmt: skip
    for host in ("localhost:8000", "127.0.0.1:8000", "127.0.0.1", "[::1]:8000", "10.1.2.3"):
        assert status(host) == 200, host
    listed = serve.create_app(state, serve.ServeSettings(allowed_hosts=["API.example"]))
    assert status("api.example:443", listed) == 200 and status("evil.example", listed) == 421
    named = serve.create_app(state, serve.ServeSettings(host="box.internal"))
    assert status("box.internal:8000", named) == 200
    anyone = serve.create_app(state, serve.ServeSettings(allowed_hosts=["*"]))
    assert status("evil.example", anyone) == 200


def test_batch_answer_is_bounded_and_encoded_off_the_event_loop(state, monkeypatch):
    # issue 26.9: 256 users x k=1000 answered 12 MB, JSON-encoded on the event loop (~0.4 s
    # during which no other client was served)
    from twotower_cli.serve import http

    client = local_client(serve.create_app(state, serve.ServeSettings(max_results=100)))
    users = [{"user": {"age": 1}}] * 6
    resp = client.post("/recommend/batch", json={"users": users, "k": 20})  # 6 x 20 = 120
    assert resp.status_code == 413
    assert resp.json()["error"] == ("users: 6 users x k=20 = 120 items, more than "
                                    "serve.max_results (100) in one answer: send fewer users or "
                                    "a smaller k")  # fmt: skip
    encoded_in = []
    dumps = json.dumps

    def spy(payload, *args, **kwargs):
        encoded_in.append((threading.current_thread().name, type(payload).__name__))
        return dumps(payload, *args, **kwargs)

    monkeypatch.setattr(http.json, "dumps", spy)
    resp = client.post("/recommend/batch", json={"users": users[:5], "k": 20})  # 100: fine
    monkeypatch.setattr(http.json, "dumps", dumps)
    assert resp.status_code == 200
    assert [len(r["items"]) for r in resp.json()["results"]] == [20] * 5
    # the bytes json.dumps gives for the whole answer, built one user's items at a time (one
    # dumps call holds the GIL, so the event loop too, for all 25,600 items)
    assert resp.content == json.dumps(resp.json()).encode()
    rows = [t for t, kind in encoded_in if kind == "list"]
    assert len(rows) == 5 and all(t.startswith("serve-worker") for t, _ in encoded_in), encoded_in


def test_second_serve_on_a_used_port_fails_before_loading_or_announcing(small_run, capsys):
    # issue 26.10: it loaded the run, printed "serve: ... on http://...", then uvicorn failed
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = twotower("serve", *SMALL, f"paths.out={small_run}", f"serve.port={port}")
    out, err = capsys.readouterr()
    assert code == 2 and "serve:" not in out, out
    assert err.strip().endswith(f"serve: cannot listen on 127.0.0.1 port {port} (serve.port): "
                                "another process listens there"), err  # fmt: skip
    assert len(err.strip().splitlines()) == 1


def test_head_deadline_moves_with_each_response(state):
    # issue 26.12: the guarded protocol keeps one timer per connection; a response moves the
    # deadline and the timer, firing early, waits out the rest. A client asking every 0.3 s
    # (timeout_read 0.5) keeps its connection for 1.5 s; silent, it is closed ~0.5 s later
    with live_server(state, timeout_read=0.5, timeout_keep_alive=5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(5):
                s.sendall(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
                time.sleep(0.3)
            silent = time.monotonic() - 0.3
            assert s.recv(100) == b""
            assert 0.4 < time.monotonic() - silent < 1.0
