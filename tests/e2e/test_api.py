"""The Python API (twotower_cli.api): stages with overrides return their figures, a finished
run answers as `twotower serve` does, and errors raise instead of exiting."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
from conftest import SMALL
from fastapi.testclient import TestClient

from twotower_cli import api, serve
from twotower_cli.core.layout import Layout

RUN = ("synthetic", "sample", "inbatch", "dssm")


@pytest.fixture(scope="module")
def out(small_run: Path, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("api") / "outputs"
    shutil.copytree(small_run, copy)
    return copy


def _vocab(out: Path, side: str) -> list:
    vocabs = json.loads((out / "synthetic" / "preprocess" / "vocabs.json").read_text())
    return vocabs[side][side]


@pytest.mark.slow
def test_stages_return_their_figures(out: Path):
    args = [*SMALL, f"paths.out={out}", "threads=1"]
    metrics = api.run("evaluate", args)  # evaluate runs again on the copied run
    written = json.loads(out.joinpath(*RUN, "evaluate", "metrics.json").read_text())
    same = lambda a, b: json.dumps(a) == json.dumps(b)  # noqa: E731 (NaN cells: no cold items)
    assert same(metrics, written) and 0 < metrics["model"]["recall@20"] <= 1
    assert same(api.run("run", args), written)  # every stage current: skipped, read back
    figures = api.run("index", args)
    assert (
        figures == json.loads(out.joinpath(*RUN, "index", "manifest.json").read_text())["figures"]
    )


@pytest.mark.slow
def test_recommendations_equal_serves_for_the_same_user(out: Path):
    model = api.open_run([*SMALL, f"paths.out={out}"])
    dirs = serve.ServeDirs(Layout.of_run(out.joinpath(*RUN), out))
    state = serve.ServeState(partial(serve.load_bundle, dirs))
    client = TestClient(serve.create_app(state, serve.ServeSettings()), base_url="http://localhost",
                        headers={"content-type": "application/json"})  # fmt: skip
    users, items = _vocab(out, "user"), _vocab(out, "item")
    for user in users[:: max(1, len(users) // 12)]:
        served = client.post("/recommend", json={"user": {"user_id": user}, "k": 15}).json()
        assert model.recommend(user, k=15) == served["items"]
    body = {"user": {}, "history": items[:5], "exclude": items[5:7], "k": 10}
    served = client.post("/recommend", json=body).json()["items"]
    assert model.recommend(history=items[:5], exclude=items[5:7], k=10) == served
    similar = client.get(f"/items/{items[3]}/similar", params={"k": 5}).json()["items"]
    assert model.similar(items[3], k=5) == similar
    with pytest.raises(api.QueryError, match="k: must be between 1 and"):
        model.recommend(users[0], k=0)
    with pytest.raises(api.QueryError, match="unknown item") as err:
        model.similar("no-such-item")
    assert err.value.field == "item_id"
