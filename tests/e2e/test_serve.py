"""`twotower serve`: the HTTP API on a small trained run, online == offline, bad requests,
request encoding, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

import faiss
import fastapi.routing
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, twotower
from fastapi.testclient import TestClient
from helpers import local_client

from twotower_cli import serve
from twotower_cli.artifacts.checkpoint import load_dir as _load_model
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import Layout
from twotower_cli.retrieval.metrics import drop_excluded
from twotower_cli.retrieval.search import EvalSet, search
from twotower_cli.serve.http import HotPath

RUN = ("synthetic", "sample", "inbatch", "dssm")


@pytest.fixture(scope="module")
def run_dir(small_run: Path) -> Path:
    return small_run


def _dirs(out: Path, run: tuple[str, ...] = RUN) -> serve.ServeDirs:
    return serve.ServeDirs(Layout.of_run(out.joinpath(*run), out))


@pytest.fixture(scope="module")
def state(run_dir: Path) -> serve.ServeState:
    return serve.ServeState(partial(serve.load_bundle, _dirs(run_dir), _load_model))


@pytest.fixture(scope="module")
def client(state) -> TestClient:
    return local_client(serve.create_app(state, serve.ServeSettings(max_batch=64)))


def offline_top(out: Path, k: int, run: tuple[str, ...] = RUN) -> tuple[np.ndarray, np.ndarray]:
    """evaluate's retrieval: test users' vectors from embed, searched in the index, train+valid
    items dropped (the same functions `twotower evaluate` calls)."""
    prep = out / "synthetic" / "preprocess"
    root = out.joinpath(*run)
    idx = faiss.read_index(str(root / "index" / "items.faiss"))
    split = {s: pd.read_parquet(prep / f"{s}.parquet") for s in ("train", "valid", "test")}
    ev = EvalSet.build(split["test"], pd.concat([split["train"], split["valid"]]), idx.ntotal)
    u = np.load(root / "embed" / "user_vectors.npy")
    ranked = search(idx, u, min(idx.ntotal, k + ev.max_exclude))
    return ev.users, drop_excluded(ranked, ev.exclude, idx.ntotal, k)


def raw_ids(out: Path, side: str) -> list:
    vocabs = json.loads((out / "synthetic" / "preprocess" / "vocabs.json").read_text())
    return vocabs[side][side]


def test_online_equals_offline_for_every_test_user(run_dir, client):
    k = 20
    users, top = offline_top(run_dir, k)
    user_raw, item_raw = raw_ids(run_dir, "user"), raw_ids(run_dir, "item")
    expected = [[item_raw[i - 1] for i in row if i > 0] for row in top]
    online = []
    for start in range(0, len(users), 64):
        body = {"users": [{"user": {"user_id": user_raw[u - 1]}} for u in users[start:start + 64]],
                "k": k}  # fmt: skip
        resp = client.post("/recommend/batch", json=body)
        assert resp.status_code == 200, resp.text
        online += [[it["item_id"] for it in r["items"]] for r in resp.json()["results"]]
    assert online == expected
    # the single-request path (no batch bookkeeping) agrees too
    for row in range(0, len(users), 7):
        resp = client.post("/recommend", json={"user": {"user_id": user_raw[users[row] - 1]}})
        assert [it["item_id"] for it in resp.json()["items"]] == expected[row]


@pytest.mark.slow
def test_online_equals_offline_with_the_user_history_feature(tmp_path: Path):
    # the user tower reads the history at request time: serve must build it as embed did
    # (with the recency prior; training histories leave-one-out: serving is the same either way)
    out, run = tmp_path / "outputs", ("synthetic", "sample", "inbatch", "hist")
    args = [*SMALL, f"paths.out={out}", "model.history=true", "model.history_len=10",
            "model.history_decay=2", "train.history_mode=leave_one_out",
            "paths.run=hist"]  # fmt: skip
    assert twotower("run", *args) == 0
    state = serve.ServeState(partial(serve.load_bundle, _dirs(out, run), _load_model))
    client = local_client(serve.create_app(state, serve.ServeSettings(max_batch=64)))
    assert client.get("/health").status_code == 200
    users, top = offline_top(out, 10, run)
    user_raw, item_raw = raw_ids(out, "user"), raw_ids(out, "item")
    for row in range(0, len(users), 5):
        resp = client.post("/recommend", json={"user": {"user_id": user_raw[users[row] - 1]},
                                                "k": 10})  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert "note" not in resp.json()  # history is used, not ignored
        expected = [item_raw[i - 1] for i in top[row] if i > 0]
        assert [it["item_id"] for it in resp.json()["items"]] == expected


def test_scores_are_the_inner_products_of_the_served_vectors(run_dir, client, state):
    root = run_dir.joinpath(*RUN)
    u_off = np.load(root / "embed" / "user_vectors.npy")
    user_ids = np.load(root / "embed" / "user_ids.npy")
    v = np.load(root / "embed" / "item_vectors.npy")
    raw = raw_ids(run_dir, "user")[user_ids[0] - 1]
    items = client.post("/recommend", json={"user": {"user_id": raw}, "k": 5}).json()["items"]
    item_dense = {r: i + 1 for i, r in enumerate(raw_ids(run_dir, "item"))}
    expected = v[[item_dense[it["item_id"]] - 1 for it in items]] @ u_off[0]
    np.testing.assert_allclose([it["score"] for it in items], expected, atol=1e-5)
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)


def test_known_user_excludes_seen_items_unless_asked(run_dir, client, state):
    uid = raw_ids(run_dir, "user")[0]
    ptr, seen = state.bundle.seen
    seen_raw = {raw_ids(run_dir, "item")[i - 1] for i in seen[ptr[1] : ptr[2]]}
    assert seen_raw
    n = state.bundle.n_items
    got = client.post("/recommend", json={"user": {"user_id": uid}, "k": n - len(seen_raw)})
    assert not {it["item_id"] for it in got.json()["items"]} & seen_raw
    everything = client.post(
        "/recommend", json={"user": {"user_id": uid}, "k": n, "exclude_seen": False}
    ).json()["items"]  # fmt: skip
    assert {it["item_id"] for it in everything} >= seen_raw
    assert len(everything) == n
    top = everything[0]["item_id"]
    again = client.post("/recommend", json={"user": {"user_id": uid}, "k": 3,
                                            "exclude_seen": False, "exclude": [top]})  # fmt: skip
    assert top not in [it["item_id"] for it in again.json()["items"]]
    assert [it["item_id"] for it in again.json()["items"]] == [
        it["item_id"] for it in everything[1:4]
    ]


def test_cold_start_user_gets_the_tower_vector_of_its_profile(run_dir, client, state):
    profile = {"region": 3, "age": 2}
    resp = client.post("/recommend", json={"user": profile, "k": 10})
    assert resp.status_code == 200
    items = resp.json()["items"]
    assert len(items) == 10
    # the same vector by hand: id 0 (unknown user), the vocabulary ids of region 3 and age 2
    vocabs = json.loads((run_dir / "synthetic" / "preprocess" / "vocabs.json").read_text())
    feats = {"user": torch.tensor([0]),
             "region": torch.tensor([vocabs["user"]["region"].index(3) + 1]),
             "age": torch.tensor([vocabs["user"]["age"].index(2) + 1])}  # fmt: skip
    with torch.no_grad():
        u = state.bundle.model.user_vectors(feats).numpy()
    _, I = state.bundle.index.search(u, 10)
    assert [it["item_id"] for it in items] == [raw_ids(run_dir, "item")[i] for i in I[0]]
    # an unseen value encodes as unknown (0), exactly like a missing one; "3" matches 3
    unseen = client.post("/recommend", json={"user": {"region": "nowhere", "age": 2}, "k": 10})
    missing = client.post("/recommend", json={"user": {"region": None, "age": "2"}, "k": 10})
    assert unseen.json()["items"] == missing.json()["items"]


def test_micro_batched_requests_get_their_own_answers_and_errors(run_dir, state):
    user_raw = raw_ids(run_dir, "user")
    queries = [serve.UserQuery({"user_id": u}) for u in user_raw[:5]]
    queries.append(serve.UserQuery({"colour": "red"}))
    ks = [3, 5, 1, 4, 2, 3]
    alone = [
        serve.recommend(state.bundle, [q], k)[0] for q, k in zip(queries[:5], ks, strict=False)
    ]

    async def together():
        batcher = serve.MicroBatcher(state, max_batch=4)  # two chunks: 4 + 2
        futures = [batcher.submit(q, k) for q, k in zip(queries, ks, strict=True)]
        assert len(batcher.pending) == 6  # nothing answered before the loop's next turn
        return await asyncio.gather(*futures, return_exceptions=True)

    got = asyncio.run(together())
    assert [items for items, _ in got[:5]] == alone
    assert isinstance(got[5], serve.RequestError) and got[5].field == "user.colour"


def test_cheap_micro_batches_run_on_the_loop_and_costly_ones_in_the_worker(state, monkeypatch):
    # issue 26.12: a thread hand-off per batch costs more than a small batch itself; a batch
    # runs on the event loop only when the bundle's measured cost predicts it under the budget
    # and no other thread computes
    from twotower_cli.serve import batching

    ran_in = []
    real = batching.answer_batch

    def spy(bundle, batch):
        ran_in.append(threading.current_thread().name)
        return real(bundle, batch)

    monkeypatch.setattr(batching, "answer_batch", spy)
    q = serve.UserQuery({"age": 1})

    async def batches(batcher, sizes, cost=None):
        for n in sizes:
            if cost is not None:
                batcher.cost = (cost[0] or state.bundle, cost[1])
            got = await asyncio.gather(*(batcher.submit(q, 5) for _ in range(n)))
            assert all(len(items) == 5 for items, _ in got)

    # not measured yet: the worker; then measured far under a 10 s budget: the loop
    asyncio.run(batches(serve.MicroBatcher(state, 64, inline_seconds=10.0), [2, 2, 2]))
    assert ran_in == ["micro-batch", "MainThread", "MainThread"]
    # 1 ms a unit (a query with k=5 is 1.05 units), budget 10 ms: 9 queries on the loop, 10 not
    ran_in.clear()
    b = serve.MicroBatcher(state, 64, inline_seconds=0.010)
    asyncio.run(batches(b, [9, 10], cost=(None, 0.001)))
    assert ran_in == ["MainThread", "micro-batch"]
    # a cost measured on another bundle (before a reload) says nothing: the worker
    ran_in.clear()
    asyncio.run(batches(b, [1], cost=(object(), 1e-9)))
    assert ran_in == ["micro-batch"]
    # cheap, but another thread computes (a batch request, a reload): the worker
    ran_in.clear()
    busy = serve.MicroBatcher(state, 64, inline_seconds=10.0, busy_elsewhere=lambda: True)
    asyncio.run(batches(busy, [1], cost=(None, 1e-9)))
    assert ran_in == ["micro-batch"]


def test_history_is_accepted_and_said_to_be_ignored_by_a_model_without_it(client):
    resp = client.post("/recommend", json={"user": {"age": 1}, "history": [1, 2, "x"], "k": 3})
    assert resp.status_code == 200
    assert resp.json()["note"] == "history ignored: this model has no history input"
    assert "note" not in client.post("/recommend", json={"user": {"age": 1}}).json()


BAD = [
    # (body or raw text, status, field named in the message)
    ('{"user": {"user_id": 1', 400, "body"),
    ("[1, 2]", 422, "body"),
    ({"k": 5}, 422, "user"),
    ({"user": {"user_id": 1}, "k": 0}, 422, "k"),
    ({"user": {"user_id": 1}, "k": 10**6}, 422, "k"),
    ({"user": {"user_id": 1}, "k": "20"}, 422, "k"),
    ({"user": {"user_id": 1}, "k": 2.5}, 422, "k"),
    ({"user": {"colour": "red"}}, 422, "user.colour"),
    ({"user": {"age": [1, 2]}}, 422, "user.age"),
    ({"user": {"age": {"a": 1}}}, 422, "user.age"),
    ({"user": {"user_id": [1]}}, 422, "user.user_id"),
    ({"user": {"user_id": True}}, 422, "user.user_id"),
    ({"user": "someone"}, 422, "user"),
    ({"user": {}, "history": "1,2"}, 422, "history"),
    ({"user": {}, "exclude": [1.5]}, 422, "exclude.0"),
    ({"user": {}, "exclude_seen": "no"}, 422, "exclude_seen"),
    ({"user": {}, "limit": 3}, 422, "limit"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD)
def test_bad_request_gets_a_4xx_naming_the_field(client, body, status, field):
    if isinstance(body, str):
        resp = client.post("/recommend", content=body,
                           headers={"content-type": "application/json"})  # fmt: skip
    else:
        resp = client.post("/recommend", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"].startswith(f"{field}:"), resp.json()


def test_the_hot_path_answers_as_the_fastapi_route_would(state, monkeypatch):
    """POST /recommend is answered by HotPath before FastAPI routes it: with HotPath taken out
    of the stack, the route gives the same status, headers and body for good and bad bodies."""
    settings = serve.ServeSettings(max_batch=64)
    hot = local_client(serve.create_app(state, settings))
    plain_app = serve.create_app(state, settings)
    plain_app.user_middleware = [m for m in plain_app.user_middleware if m.cls is not HotPath]
    plain = local_client(plain_app)
    routed = []
    monkeypatch.setattr(fastapi.routing, "run_endpoint_function",
                        _counting(fastapi.routing.run_endpoint_function, routed))  # fmt: skip
    bodies = [{"user": {"user_id": 1}, "k": 5}, {"user": {"age": 1}, "history": [1], "k": 3},
              *(b for b, _, _ in BAD)]  # fmt: skip
    for body in bodies:
        kw = {"content": body} if isinstance(body, str) else {"json": body}
        before = len(routed)
        a = hot.post("/recommend", **kw)
        assert len(routed) == before  # answered without FastAPI's routing
        b = plain.post("/recommend", **kw)
        assert len(routed) == before + 1
        assert a.status_code == b.status_code, body
        if a.status_code == 200:  # took_ms differs, and with its digits content-length
            assert {**a.json(), "took_ms": 0} == {**b.json(), "took_ms": 0}
            assert a.headers.keys() == b.headers.keys()
            assert int(a.headers["content-length"]) == len(a.content)
        else:
            assert (a.headers, a.content) == (b.headers, b.content)
    # other methods and paths still go through FastAPI
    assert hot.get("/recommend").status_code == 405
    assert hot.post("/recommend/batch", json={"users": [{"user": {}}], "k": 2}).status_code == 200


def _counting(fn, calls: list):
    async def counted(*args, **kwargs):
        calls.append(1)
        return await fn(*args, **kwargs)

    return counted


def test_bad_batch_and_similar_requests_get_a_4xx(client):
    too_many = {"users": [{"user": {}}] * 65, "k": 5}
    resp = client.post("/recommend/batch", json=too_many)
    assert resp.status_code == 413 and resp.json()["error"].startswith("users: must hold 1 to 64")
    resp = client.post("/recommend/batch", json={"users": [], "k": 5})
    assert resp.status_code == 422 and resp.json()["field"] == "users"
    resp = client.post("/recommend/batch", json={"users": [{"user": {"x": 1}}]})
    assert resp.status_code == 422 and resp.json()["field"] == "user.x"
    resp = client.get("/items/not-an-item/similar")
    assert resp.status_code == 404 and resp.json()["error"].startswith("item_id:")
    resp = client.get(f"/items/{1}/similar?k=abc")
    assert resp.status_code == 422 and resp.json()["error"].startswith("k:")
    resp = client.get(f"/items/{1}/similar?k=0")
    assert resp.status_code == 422 and resp.json()["error"].startswith("k:")


def test_openapi_document_describes_the_request_bodies(client):
    doc = client.get("/openapi.json").json()
    text = json.dumps(doc)
    refs = {r.split("/")[-1] for r in re.findall(r'"#/components/schemas/([^"]+)"', text)}
    assert {"RecommendBody", "BatchBody", "UserBody"} <= refs <= set(doc["components"]["schemas"])
    assert "k" in doc["components"]["schemas"]["RecommendBody"]["properties"]


def test_similar_items_rank_by_inner_product_without_the_item_itself(run_dir, client):
    root = run_dir.joinpath(*RUN)
    v = np.load(root / "embed" / "item_vectors.npy")
    item_raw = raw_ids(run_dir, "item")
    resp = client.get(f"/items/{item_raw[4]}/similar?k=5").json()
    scores = v @ v[4]
    scores[4] = -np.inf
    expected = [item_raw[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert [it["item_id"] for it in resp["items"]] == expected
    np.testing.assert_allclose([it["score"] for it in resp["items"]],
                               np.sort(scores)[::-1][:5], atol=1e-5)  # fmt: skip


def test_health_reports_the_run_and_sizes(client, state):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["run"] == "dssm"
    assert h["items"] == state.bundle.n_items == 200
    assert h["users"] == 300 and h["dim"] == 64 and h["history_input"] is False


@pytest.mark.slow
def test_reload_swaps_to_new_artifacts_and_keeps_serving_when_they_are_broken(run_dir, tmp_path):
    # a private copy of the run, so retraining it does not disturb the module's fixtures
    import shutil

    out = tmp_path / "outputs"
    shutil.copytree(run_dir, out)
    state = serve.ServeState(partial(serve.load_bundle, _dirs(out), _load_model), out)
    app = local_client(serve.create_app(state, serve.ServeSettings()))
    body = {"user": {"user_id": raw_ids(out, "user")[0]}, "k": 10}
    old_bundle = state.bundle
    before = app.post("/recommend", json=body).json()["items"]
    for stage in ("train", "embed", "index"):  # one epoch from another seed: other vectors
        assert twotower(stage, *SMALL, f"paths.out={out}", "seed=7", "train.epochs=1") == 0
    assert state.reload() is True
    assert state.generation == 2 and state.bundle is not old_bundle
    after = app.post("/recommend", json=body).json()["items"]
    assert after != before
    # a request holding the old bundle still answers from it (what in-flight requests use)
    q = [serve.UserQuery(body["user"])]
    assert [it["item_id"] for it in serve.recommend(old_bundle, q, 10)[0]] == [
        it["item_id"] for it in before
    ]
    (out.joinpath(*RUN) / "index" / "manifest.json").unlink()
    assert state.reload() is False
    health = app.get("/health").json()
    assert health["generation"] == 2 and health["last_reload"]["ok"] is False
    assert "run `twotower index` first" in health["last_reload"]["error"]
    assert str(out) not in json.dumps(health)  # the error names the dir relative to paths.out
    assert app.post("/recommend", json=body).json()["items"] == after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_installed_serve_answers_reloads_on_sighup_and_stops_cleanly(run_dir):
    port = _free_port()
    script = Path(sys.executable).with_name("twotower")
    proc = subprocess.Popen(
        [str(script), "serve", *SMALL, f"paths.out={run_dir}", f"serve.port={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                health = _get(f"{base}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert health["generation"] == 1
        req = urllib.request.Request(
            f"{base}/recommend", data=json.dumps({"user": {"age": 1}, "k": 4}).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert len(json.loads(resp.read())["items"]) == 4
        proc.send_signal(signal.SIGHUP)
        for _ in range(300):
            if _get(f"{base}/health")["generation"] == 2:
                break
            time.sleep(0.1)
        assert _get(f"{base}/health")["generation"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "SIGHUP reloads" in out


def test_load_test_bodies_mix_known_users_and_cold_starts(run_dir):
    from twotower_cli.tools.loadtest import request_bodies

    bodies = [json.loads(b) for b in request_bodies(run_dir / "synthetic" / "preprocess", 16,
                                                    cold_every=8, k=5, seed=0)]  # fmt: skip
    cold = [b for b in bodies if "user_id" not in b["user"]]
    # every 8th of 16: two cold starts with every profile feature, the rest a user id alone
    assert len(cold) == 2 and all(set(b["user"]) == {"region", "age"} for b in cold)
    assert all(set(b["user"]) == {"user_id"} and b["k"] == 5 for b in bodies if b not in cold)


@pytest.mark.slow
def test_load_test_drives_a_real_server_and_writes_its_report(run_dir, tmp_path):
    from twotower_cli.tools.loadtest import main as loadtest

    report = tmp_path / "loadtest.json"
    loadtest(["--requests", "300", "--concurrency", "8", "--warmup", "20", "--max-seconds",
              "60", "--preprocess-dir", str(run_dir / "synthetic" / "preprocess"),
              "--out", str(report), *SMALL, f"paths.out={run_dir}"])  # fmt: skip
    r = json.loads(report.read_text())
    assert r["requests"] == 300 and r["errors"] == 0 and r["hit_deadline"] is False
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["requests_per_s"] > 0 and r["server_cpu_ms_per_request"] > 0
    assert r["run"] == "dssm" and r["items"] == 200


def _private_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "outputs"
    shutil.copytree(run_dir, out)
    return out


def _other_weights(model_pt: Path) -> bytes:
    """model.pt as another run would have written it: the same format, other weights."""
    import io

    ckpt = torch.load(model_pt, weights_only=True)
    ckpt["state_dict"] = {n: t + 0.5 if t.is_floating_point() else t
                          for n, t in ckpt["state_dict"].items()}  # fmt: skip
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def test_reload_rehashes_and_refuses_a_copied_in_model_or_flipped_index_bytes(run_dir, tmp_path):
    # issue 26.5: the hashes were cached by the manifest's mtime and size, so a reload after
    # the files (not the manifests) changed served them with "reload ok"
    out = _private_run(run_dir, tmp_path)
    root = out.joinpath(*RUN)
    state = serve.ServeState(partial(serve.load_bundle, _dirs(out)), out)
    app = local_client(serve.create_app(state, serve.ServeSettings()))
    body = {"user": {"user_id": raw_ids(out, "user")[0]}, "k": 10}
    before = app.post("/recommend", json=body).json()["items"]
    model_pt, index = root / "train" / "model.pt", root / "index" / "items.faiss"
    good_model, good_index = model_pt.read_bytes(), index.read_bytes()
    model_pt.write_bytes(_other_weights(model_pt))
    assert state.reload() is False
    assert state.last_reload["error"] == (
        "synthetic/sample/inbatch/dssm/train/model.pt: missing, truncated or changed since "
        "`twotower train` wrote it: rerun `twotower train`"
    )
    model_pt.write_bytes(good_model)
    flipped = bytearray(good_index)
    flipped[-7] ^= 0xFF  # inside the last item vector: a readable index with one wrong score
    index.write_bytes(bytes(flipped))
    assert (
        state.reload() is False
        and "index/items.faiss: missing, truncated or changed" in (state.last_reload["error"])
    )
    assert state.generation == 1 and app.post("/recommend", json=body).json()["items"] == before
    index.write_bytes(good_index)
    assert state.reload() is True and state.generation == 2


def test_a_model_written_after_the_check_is_not_the_one_loaded(run_dir, tmp_path):
    # a retrain finishing between the hash check and the read must not get its model served
    # against the old index: serve loads the very bytes it hashed (hook: the new model.pt lands
    # when the model is about to be rebuilt, after every check)
    out = _private_run(run_dir, tmp_path)
    model_pt = out.joinpath(*RUN, "train", "model.pt")
    newer = _other_weights(model_pt)
    original = torch.load(model_pt, weights_only=True)["state_dict"]

    def retrain_lands_then_load(train_dir: Path, data: bytes | None = None):
        model_pt.write_bytes(newer)
        return _load_model(train_dir, data) if data is not None else _load_model(train_dir)

    bundle = serve.load_bundle(_dirs(out), retrain_lands_then_load)
    loaded = bundle.model.state_dict()
    assert all(torch.equal(loaded[n], t) for n, t in original.items())


def _rewrite_listed(stage_dir: Path, name: str, data: bytes) -> None:
    """Replace one output and its manifest entry, as a hostile or buggy writer could."""
    import hashlib

    (stage_dir / name).write_bytes(data)
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    manifest["outputs"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_vocabulary_longer_than_the_model_s_is_refused_at_load(run_dir, tmp_path):
    # issue 26.11: one more `region` value than the checkpoint's embedding table: requests with
    # it gave 500s once serving; now the load fails with one line
    out = _private_run(run_dir, tmp_path)
    prep = out / "synthetic" / "preprocess"
    vocabs = json.loads((prep / "vocabs.json").read_text())
    vocabs["user"]["region"].append("atlantis")
    _rewrite_listed(prep, "vocabs.json", json.dumps(vocabs).encode())
    with pytest.raises(TwoTowerError, match=r"vocabs.json's user.region holds \d+ values, the "
                       r"model \d+\); rerun `twotower preprocess`"):  # fmt: skip
        serve.load_bundle(_dirs(out))
