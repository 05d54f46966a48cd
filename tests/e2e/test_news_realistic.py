"""`dataset=news` on a log shaped like a real news app's (twotower_cli.tools.news_sim): the
simulated shape itself, the pool window measured from the data, and the default command
beating the better of popularity and trending by 1.3x, with every test click counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_json, twotower
from fixtures_news import write_realistic_news

from twotower_cli.tools.news_sim import oracle_metrics


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("news_real")
    return raw, write_realistic_news(raw)


@pytest.mark.slow  # ~20 s on a quiet machine: 55k exposures, up to 60 epochs
def test_default_news_run_beats_popularity_and_trending(realistic, tmp_path: Path):
    raw, planted = realistic
    out = tmp_path / "outputs"
    assert twotower("run", "dataset=news", f"dataset.load.raw_dir={raw}", f"paths.out={out}",
                    "threads=1") == 0  # fmt: skip
    prep = out / "news" / "preprocess"
    figures = read_json(prep / "manifest.json")["figures"]
    for name, n in planted.items():
        assert figures[name] == n, name
    # auto window: measured from the training clicks' ages, recorded with their quantiles
    assert 2 < figures["candidate_days"] < 7
    assert figures["click_age_hours_p50"] < figures["click_age_hours_p95"] < 24 * 6
    metrics = read_json(out / "news" / "sample" / "inbatch" / "dssm" / "evaluate" /
                        "metrics.json")  # fmt: skip
    model, pop, trend = metrics["model"], metrics["popularity"], metrics["trending"]
    assert model["recall@20"] > 1.3 * max(pop["recall@20"], trend["recall@20"])
    # the auto window holds about the target share of the test clicks
    assert 0.85 < model["candidate_coverage"] <= 1.0
    assert model["candidate_coverage"] == pop["candidate_coverage"]
    # most test clicks go to articles training never saw; the model ranks those by content
    assert model["cold_click_share"] > 0.3
    assert model["cold_recall@20"] > 0.1 and pop["cold_recall@20"] == 0.0
    oracle = oracle_metrics(raw, prep, [20])
    assert oracle["recall@20"] > model["recall@20"]


@pytest.mark.slow
def test_candidate_days_number_overrides_auto(realistic, tmp_path: Path, capsys):
    raw, _ = realistic
    out = tmp_path / "outputs"
    args = ["preprocess", "dataset=news", f"dataset.load.raw_dir={raw}", f"paths.out={out}"]
    assert twotower(*args, "dataset.load.candidate_days=1") == 0
    figures = read_json(out / "news" / "preprocess" / "manifest.json")["figures"]
    assert figures["candidate_days"] == 1.0
    # a one-day pool leaves out many test clicks, and they stay in the truth
    assert figures["test_outside_candidates"] > 0.2 * figures["test"]
    candidates = np.load(out / "news" / "preprocess" / "candidates.npy")
    assert figures["candidates"] == len(candidates)
    assert twotower(*args, "dataset.load.candidate_days=fresh") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.load.candidate_days" in err[-1] and "'fresh'" in err[-1]
    assert twotower(*args, "dataset.load.candidate_coverage_target=1.5") == 2
    assert "candidate_coverage_target" in capsys.readouterr().err
