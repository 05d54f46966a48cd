"""`twotower report`: one self-contained HTML page for a finished run (every plot inlined as a
base64 PNG, no script, no outside reference) plus a PNG per plot and the numbers behind them
(`diagnostics.json`), under the run's `report/`. `twotower report --compare RUN_DIR ...` puts
several runs on one page.

Sections: training curves, Recall/NDCG@k of the model and every baseline in metrics.json,
recall by item popularity bucket and by user activity bucket, catalogue coverage, scores of
positives against random items (diagnostics.py computes those, plots.py draws them), SENet
field weights and multi-task weights where the run has them, timings and config.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from twotower_cli.core.layout import FILES
from twotower_cli.report.diagnostics import STAGE_ORDER, RunData
from twotower_cli.report.plots import Plot, plots, rankers

METRIC_NAMES = ("recall", "precision", "ndcg", "hit_rate", "coverage", "cold_recall")


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .92em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _e(value)


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img_tag(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="{plot.name}"><img alt="{_e(plot.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(plot.caption)} '
            f"({_e(plot.name)}.png)</figcaption></figure>")  # fmt: skip


def metrics_table(runs: list[RunData]) -> str:
    cols = rankers(runs)
    ks = runs[0].ks
    held = {key for run in runs for key in run.metrics["model"]}
    names = [m for m in METRIC_NAMES if any(f"{m}@{k}" in held for k in ks)]
    rows = [[f"{m}@{k}", *(run.metrics[r].get(f"{m}@{k}", float("nan")) for _, run, r in cols)]
            for k in ks for m in names]  # fmt: skip
    return table(["metric", *(label for label, _, _ in cols)], rows)


def bucket_tables(runs: list[RunData]) -> str:
    out = []
    for run in runs:
        s = run.diag.summary
        b, u, k = s["item_buckets"], s["user_buckets"], s["k"]
        name = f"{run.label}: " if len(runs) > 1 else ""
        out.append(f"<h3>{_e(name)}item buckets (recall@{k} of held-out pairs)</h3>")
        out.append(table(
            ["bucket", "items", "training share", "test pairs", "model recall",
             "popularity recall", "model share of slots"],
            [[n, b["items"][i], b["train_share"][i], b["model"]["pairs"][i],
              b["model"]["recall"][i], b["popularity"]["recall"][i],
              b["model"]["share_of_recommendations"][i]] for i, n in enumerate(b["names"])],
        ))  # fmt: skip
        out.append(f"<h3>{_e(name)}user buckets (mean recall@{k} per user)</h3>")
        out.append(table(
            ["training positives", "users", "model recall", "popularity recall"],
            [[n, u["model"]["users"][i], u["model"]["recall"][i], u["popularity"]["recall"][i]]
             for i, n in enumerate(u["names"])],
        ))  # fmt: skip
        cov, sc = s["coverage"], s["scores"]
        out.append(table(
            ["", "model", "popularity"],
            [[f"coverage@{k}", cov["model"]["curve"][-1], cov["popularity"]["curve"][-1]],
             [f"recall@{k}", s["recall"]["model"], s["recall"]["popularity"]],
             ["mean score, positives / random", sc["positive_mean"], sc["random_mean"]],
             ["AUC positives vs random", sc["auc"], ""]],
        ))  # fmt: skip
    return "".join(out)


def timings_table(runs: list[RunData]) -> str:
    rows = [[stage, *(run.manifests[stage]["seconds"] for run in runs)] for stage in STAGE_ORDER]
    rows.append(["total", *(sum(run.manifests[s]["seconds"] for s in STAGE_ORDER)
                            for run in runs)])  # fmt: skip
    rows.append(["epochs", *(len(run.history) for run in runs)])
    rows.append(["parameters", *(run.manifests["train"]["figures"].get("parameters", "")
                                 for run in runs)])  # fmt: skip
    return table(["stage (seconds)", *(run.label for run in runs)], rows)


def config_section(runs: list[RunData]) -> str:
    if len(runs) == 1:
        text = yaml.safe_dump(runs[0].config, sort_keys=False, default_flow_style=None)
        return (f"<details open><summary>resolved config</summary><pre>{_e(text)}</pre>"
                "</details>")  # fmt: skip
    flat = [pd.json_normalize(run.config, sep=".").iloc[0].astype(str) for run in runs]
    frame = pd.concat(flat, axis=1).fillna("(absent)")
    differ = frame[frame.nunique(axis=1) > 1]
    differ = differ[[not k.startswith("paths.") for k in differ.index]]
    rows = [[key, *vals] for key, vals in zip(differ.index, differ.to_numpy().tolist(),
                                               strict=True)]  # fmt: skip
    return ("<p>Config keys that differ between the runs (paths aside):</p>"
            + table(["key", *(run.label for run in runs)], rows))  # fmt: skip


def page(runs: list[RunData], made: list[Plot]) -> str:
    one = len(runs) == 1
    datasets = ", ".join(dict.fromkeys(run.dirs.dataset for run in runs))
    title = f"twotower report: {datasets}, " + (runs[0].label if one else "comparison")
    about = "".join(f"<li><code>{_e(run.label)}</code>: {_e(run.dirs.root)}</li>" for run in runs)
    nav = " | ".join(f'<a href="#{p.name}">{_e(p.title)}</a>' for p in made)
    figures = "".join(f"<h2>{_e(p.title)}</h2>{img_tag(p)}" for p in made)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    seed = _e(runs[0].config.get("seed", ""))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<ul>{about}</ul>
<p>Made {stamp} by <code>twotower report</code>; seed {seed}.</p>
<nav>{nav}</nav>
<h2>Test metrics</h2>
{metrics_table(runs)}
{figures}
<h2>Bucket numbers</h2>
{bucket_tables(runs)}
<h2>Timings</h2>
{timings_table(runs)}
<h2>Config</h2>
{config_section(runs)}
</body></html>
"""


def write_report(runs: list[RunData], out_dir: Path) -> dict:
    """index.html, one PNG per plot and diagnostics.json into `out_dir`; returns figures for the
    manifest."""
    made = plots(runs)
    for plot in made:
        (out_dir / FILES.plot(plot.name)).write_bytes(plot.png)
    (out_dir / FILES.report_page).write_text(page(runs, made), encoding="utf-8")
    diagnostics = {run.label: run.diag.summary for run in runs}
    (out_dir / FILES.diagnostics).write_text(json.dumps(diagnostics, indent=1))
    return {
        "plots": [p.name for p in made],
        "runs": [str(run.dirs.root) for run in runs],
        **({"auc": runs[0].diag.summary["scores"]["auc"]} if len(runs) == 1 else {}),
    }
