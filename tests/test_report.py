"""`twotower report`: the bucket maths by hand, the page on the small runs (self-contained, every
plot present, numbers equal to evaluate's), side by side, and in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import chromium, open_page
from conftest import SMALL, read_json, twotower
from PIL import Image

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.report.diagnostics import (
    BucketSettings,
    coverage_curve,
    pairwise_auc,
    popularity_buckets,
    recall_by_item_bucket,
    user_buckets,
)
from twotower_cli.retrieval.search import EvalSet

PLOTS = {"training", "metrics", "item_buckets", "user_buckets", "coverage", "scores"}


# ---- the maths, by hand -------------------------------------------------------------------


def test_popularity_buckets_cut_by_share_of_interactions():
    # counts 5, 3, 1, 1, 0 (10 in all); interactions before each item in popularity order:
    # 0, 5, 8, 9, 10 -> shares 0, .5, .8, .9, 1.0. head: share before < .5 -> item 1;
    # torso: < .8 -> item 2; tail: items 3, 4 and the unseen item 5
    assert popularity_buckets(np.array([5, 3, 1, 1, 0]), 0.5, 0.8).tolist() == [0, 1, 2, 2, 2]
    # ties go by id, so the order does not depend on how the counts came in
    assert popularity_buckets(np.array([1, 5, 1, 3, 0]), 0.5, 0.8).tolist() == [2, 0, 2, 1, 2]


def test_item_bucket_recall_counts_held_out_pairs():
    # 3 items: item 1 head, 2 torso, 3 tail. user 10 holds out items 1 and 3, user 20 item 2.
    held = pd.DataFrame({"user": [10, 10, 20], "item": [1, 3, 2]})
    ev = EvalSet.build(held, pd.DataFrame({"user": [], "item": []}, dtype=int), 3)
    top = np.array([[1, 2], [3, -1]])  # user 10 finds item 1; user 20 misses item 2
    out = recall_by_item_bucket(top, ev, np.array([0, 1, 2]), 3)
    assert out["pairs"] == [1, 1, 1]
    assert out["recall"] == [1.0, 0.0, 0.0]
    # slots: items 1, 2, 3 -> one each of 3 filled slots
    assert out["share_of_recommendations"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_user_buckets_and_coverage_and_auc():
    # training positives 1..9; tercile cuts at 3.67 and 6.33 -> int 3 and 6: 1-3, 4-6, 7-9
    bucket, labels = user_buckets(np.arange(1, 10), (1 / 3, 2 / 3))
    assert bucket.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert labels == ["1-3", "4-6", "7-9"]
    # items first met at rank 0: {1, 2}, rank 1: {3}, never: 4 of 4 items -> .5, .75
    assert coverage_curve(np.array([[1, 3], [2, 1]]), 4) == [0.5, 0.75]
    # positives 2, 4 against random 1, 2, 3: 2 beats 1 and ties 2 -> 1.5 / 3; 4 beats all
    # -> 3 / 3; mean (0.5 + 1) / 2
    assert pairwise_auc(np.array([2.0, 4.0]), np.array([1.0, 2.0, 3.0])) == 0.75


def test_bad_bucket_settings_name_the_key():
    with pytest.raises(TwoTowerError, match="report.head_share, report.torso_share"):
        BucketSettings(head_share=0.9, torso_share=0.8).check()
    with pytest.raises(TwoTowerError, match="report.user_quantiles"):
        BucketSettings(user_quantiles=(0.6, 0.3)).check()


# ---- pages on the small runs -----------------------------------------------------------------


class Refs(HTMLParser):
    """Every src/href of a page, and the tags it uses."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset")]


def check_self_contained(page: Path) -> list[bytes]:
    """Asserts the page needs nothing outside itself; returns its images' PNG bytes."""
    parser = Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}, parser.tags
    images = []
    for tag, attr, value in parser.refs:
        if tag == "a" and value.startswith("#"):
            continue  # the page's own table of contents
        prefix = "data:image/png;base64,"
        assert tag == "img" and attr == "src" and value.startswith(prefix), (tag, attr, value[:80])
        png = base64.b64decode(value[len(prefix) :], validate=True)
        with Image.open(io.BytesIO(png)) as im:
            im.load()  # decodes every pixel
            assert im.format == "PNG" and im.width > 200 and im.height > 150
        images.append(png)
    return images


@pytest.fixture(scope="module")
def runs(small_run: Path, tmp_path_factory) -> Path:
    """dssm (small_run's), senet and multitask runs of SMALL side by side; returns their
    sampler dir."""
    out = tmp_path_factory.mktemp("report") / "outputs"
    shutil.copytree(small_run, out)
    for model in ("senet", "multitask"):
        for stage in ("train", "embed", "index", "evaluate"):
            assert twotower(stage, *SMALL, f"paths.out={out}", "threads=1", f"model={model}") == 0
    return out / "synthetic" / "sample" / "inbatch"


def _report(runs: Path, model: str) -> Path:
    assert twotower("report", *SMALL, f"paths.out={runs.parents[2]}", f"model={model}") == 0
    return runs / model / "report"


@pytest.mark.slow  # the module's three small runs: ~15 s on 2 busy cores
def test_report_of_a_run_has_every_plot_and_evaluates_numbers(runs: Path):
    report = _report(runs, "dssm")
    pngs = {p.stem for p in report.glob("*.png")}
    assert pngs == PLOTS  # no SENet or multi-task plot for a DSSM
    inline = check_self_contained(report / "index.html")
    assert sorted(inline) == sorted((report / f"{name}.png").read_bytes() for name in pngs)
    d = read_json(report / "diagnostics.json")["inbatch/dssm"]
    metrics = read_json(runs / "dssm" / "evaluate" / "metrics.json")
    # recomputed from the artifacts, the rankings are evaluate's
    for ranker in ("model", "popularity"):
        assert d["recall"][ranker] == pytest.approx(metrics[ranker]["recall@20"], abs=1e-12)
        curve = d["coverage"][ranker]["curve"]
        assert curve[-1] == pytest.approx(metrics[ranker]["coverage@20"], abs=1e-12)
        assert curve[9] == pytest.approx(metrics[ranker]["coverage@10"], abs=1e-12)
        assert all(np.diff(curve) >= 0)
    test = pd.read_parquet(runs.parents[1] / "preprocess" / "test.parquet")
    assert sum(d["item_buckets"]["model"]["pairs"]) == len(test.drop_duplicates())
    users = d["user_buckets"]["model"]["users"]
    assert sum(users) == d["users"] == test["user"].nunique()
    # the buckets' mean recall, weighted by users, is the overall recall
    by_bucket = np.dot(users, d["user_buckets"]["model"]["recall"]) / sum(users)
    assert by_bucket == pytest.approx(d["recall"]["model"], abs=1e-12)
    assert sum(d["item_buckets"]["train_share"]) == pytest.approx(1.0)
    assert d["scores"]["positive_mean"] > d["scores"]["random_mean"]  # planted clusters
    assert 0.5 < d["scores"]["auc"] <= 1.0
    manifest = read_json(report / "manifest.json")
    assert manifest["stage"] == "report" and set(manifest["figures"]["plots"]) == PLOTS
    html = (report / "index.html").read_text()
    for text in ("recall@20", "popularity", "Timings", "resolved config", "head", "tail"):
        assert text in html
    # one row per metric and k (every row was listed twice: "recall@" matched cold_recall@k)
    assert "<h1>twotower report: synthetic, inbatch/dssm</h1>" in html
    section = html.split("<h2>Test metrics</h2>")[1].split("<h2>")[0]
    cells = re.findall(r"<tr><td>([^<]+)</td>", section)
    names = ("recall", "precision", "ndcg", "hit_rate", "coverage", "cold_recall")
    assert cells == [f"{m}@{k}" for k in (10, 20, 50) for m in names]
    assert section.count("<tr>") == 1 + 3 * 6  # the header, 3 cut-offs x 6 metrics


@pytest.mark.slow
def test_report_of_a_sampled_evaluation_scores_the_same_users(runs: Path, tmp_path: Path):
    out = tmp_path / "outputs"
    shutil.copytree(runs.parents[2], out)
    sampled = [*SMALL, f"paths.out={out}", "eval.max_users=7"]
    assert twotower("evaluate", *sampled) == 0
    assert twotower("report", *sampled) == 0
    run = out / "synthetic" / "sample" / "inbatch" / "dssm"
    metrics = read_json(run / "evaluate" / "metrics.json")
    d = read_json(run / "report" / "diagnostics.json")["inbatch/dssm"]
    assert metrics["users_sampled"]["evaluated"] == d["users"] == 7
    for ranker in ("model", "popularity"):
        assert d["recall"][ranker] == pytest.approx(metrics[ranker]["recall@20"], abs=1e-12)


def test_senet_and_multitask_reports_show_their_weights(runs: Path):
    senet = _report(runs, "senet")
    assert {p.stem for p in senet.glob("*.png")} == PLOTS | {"field_weights"}
    multitask = _report(runs, "multitask")
    assert {p.stem for p in multitask.glob("*.png")} == PLOTS | {"task_weights"}
    check_self_contained(multitask / "index.html")


@pytest.mark.slow
def test_compare_puts_runs_side_by_side(runs: Path):
    out = runs.parents[2]
    dirs = [str(runs / m) for m in ("dssm", "senet", "multitask")]
    assert twotower("report", "--compare", *dirs, f"paths.out={out}") == 0
    page = out / "compare" / "report" / "index.html"
    assert len(check_self_contained(page)) == len(PLOTS) + 2
    html = page.read_text()
    for label in ("inbatch/dssm", "inbatch/senet", "inbatch/multitask", "model._target_"):
        assert label in html
    assert set(read_json(page.parent / "diagnostics.json")) == {
        "inbatch/dssm", "inbatch/senet", "inbatch/multitask"
    }  # fmt: skip


@pytest.mark.slow
def test_report_errors_are_one_line(runs: Path, tmp_path: Path, capsys):
    out = runs.parents[2]
    assert twotower("report", *SMALL, f"paths.out={out}", "model=parallel") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parallel/train has no finished output" in err[0], err
    assert "`twotower run`" in err[0]
    assert twotower("report", *SMALL, f"paths.out={out}", "report.head_share=0.9") == 2
    assert "report.head_share" in capsys.readouterr().err
    assert twotower("report", "--compare") == 2
    assert "--compare needs run dirs" in capsys.readouterr().err
    assert not (runs / "parallel").exists()


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                    reason="no chromium here (.ci/run installs it)")  # fmt: skip
def test_report_renders_in_headless_chromium(runs: Path, tmp_path: Path):
    # the check can fail: a page with a broken image and a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<img src="missing.png"><script>console.error("boom"); nope();</script>')
    errors, _ = open_page(bad)
    assert any("ERR_FILE_NOT_FOUND" in e for e in errors) and "boom" in errors, errors
    out = runs.parents[2]
    dirs = [str(runs / m) for m in ("dssm", "senet")]
    assert twotower("report", "--compare", *dirs, f"paths.out={out}") == 0
    errors, png = open_page(out / "compare" / "report" / "index.html")
    assert errors == []
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    # the whole page: several plots tall, and not blank (ink on white, many grey levels)
    assert shot.shape[0] > 3000, shot.shape
    assert shot.std() > 10 and (shot < 128).mean() > 0.005 and len(np.unique(shot)) > 50


@pytest.mark.slow
def test_a_run_name_with_dollars_is_drawn_as_text(runs: Path):
    # `$x^$` is not valid TeX: matplotlib's mathtext would raise while drawing the legend
    odd = runs / "dssm-$x^$"
    shutil.copytree(runs / "dssm", odd, ignore=shutil.ignore_patterns("report"))
    out = runs.parents[2]
    assert twotower("report", "--compare", str(odd), str(runs / "dssm"), f"paths.out={out}") == 0
    assert "inbatch/dssm-$x^$" in (out / "compare" / "report" / "index.html").read_text()
