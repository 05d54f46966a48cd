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

PLOTS = {"training", "metrics", "item_buckets", "user_buckets", "coverage", "scores"}


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
