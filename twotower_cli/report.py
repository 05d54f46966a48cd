"""`twotower report`: one self-contained HTML page for a finished run (every plot inlined as a
base64 PNG, no script, no outside reference) plus a PNG per plot and the numbers behind them
(`diagnostics.json`), under the run's `report/`. `twotower report --compare RUN_DIR ...` puts
several runs on one page. Plots are drawn on matplotlib's Agg canvas (no display needed).

Sections: training curves, Recall/NDCG@k of the model and every baseline in metrics.json,
recall by item popularity bucket and by user activity bucket, catalogue coverage, scores of
positives against random items (diagnostics.py computes those), SENet field weights and
multi-task weights where the run has them, timings and config.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from twotower_cli.artifacts import read_manifest
from twotower_cli.diagnostics import BucketSettings, Diagnostics, RunDirs, analyse

STAGE_ORDER = ("preprocess", "sample", "train", "embed", "index", "evaluate")
METRIC_NAMES = ("recall", "precision", "ndcg", "hit_rate", "coverage")
BASELINE_STYLE = {"linestyle": "--", "color": "0.45"}


@dataclass
class RunData:
    """Everything the report reads of one run."""

    label: str
    dirs: RunDirs
    history: list[dict]
    metrics: dict
    manifests: dict[str, dict]
    diag: Diagnostics
    field_weights: dict | None
    tasks: dict | None

    @classmethod
    def load(cls, dirs: RunDirs, settings: BucketSettings, label: str = "") -> RunData:
        train = dirs.root / "train"
        optional = lambda name: (  # noqa: E731
            json.loads((train / name).read_text()) if (train / name).exists() else None
        )
        return cls(
            label or dirs.label,
            dirs,
            json.loads((train / "history.json").read_text()),
            json.loads((dirs.root / "evaluate" / "metrics.json").read_text()),
            {s: read_manifest(dirs.stage(s)) for s in STAGE_ORDER},
            analyse(dirs, settings),
            optional("field_weights.json"),
            optional("tasks.json"),
        )

    @property
    def config(self) -> dict:
        return self.manifests["evaluate"]["config"]

    @property
    def ks(self) -> list[int]:
        return sorted(int(key.split("@")[1]) for key in self.metrics["model"] if "recall@" in key)


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    png: bytes


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def _figure(n_panels: int = 1, width: float = 5.2, height: float = 3.6):
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def training_plot(runs: list[RunData]) -> Plot:
    fig, (loss_ax, valid_ax) = _figure(2)
    valid_key = ""
    for run in runs:
        h = pd.DataFrame(run.history)
        valid_key = next(c for c in h.columns if c.startswith("valid_recall@"))
        loss_ax.plot(h["epoch"], h["loss"], marker="o", ms=3, label=run.label)
        line = valid_ax.plot(h["epoch"], h[valid_key], marker="o", ms=3, label=run.label)[0]
        best = h[valid_key].idxmax()
        valid_ax.scatter(h["epoch"][best], h[valid_key][best], s=80, facecolors="none",
                         edgecolors=line.get_color())  # fmt: skip
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss per epoch")
    valid_ax.set(xlabel="epoch", ylabel=valid_key, title=f"{valid_key} (o = the kept epoch)")
    for ax in (loss_ax, valid_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Plot(
        "training",
        "Training curves",
        "Training loss and validation recall per epoch; "
        "the circled epoch's weights are the ones kept (early stopping).",
        to_png(fig),
    )


def _rankers(runs: list[RunData]) -> list[tuple[str, RunData, str]]:
    """(legend label, run, ranker) of each curve: one run shows every ranker of its
    metrics.json; several show each run's model and the first run's baselines."""
    if len(runs) == 1:
        return [(name, runs[0], name) for name in runs[0].metrics]
    out = [(run.label, run, "model") for run in runs]
    return out + [(name, runs[0], name) for name in runs[0].metrics if name != "model"]


def metric_curves_plot(runs: list[RunData]) -> Plot:
    fig, axes = _figure(2)
    for label, run, ranker in _rankers(runs):
        style = BASELINE_STYLE if ranker == "popularity" else {}
        for ax, metric in zip(axes, ("recall", "ndcg"), strict=True):
            values = [run.metrics[ranker][f"{metric}@{k}"] for k in run.ks]
            ax.plot(run.ks, values, marker="o", label=label, **style)
    for ax, metric in zip(axes, ("Recall", "NDCG"), strict=True):
        ax.set(xlabel="k", ylabel=f"{metric}@k", title=f"{metric}@k on the test split")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Plot(
        "metrics",
        "Recall and NDCG at k",
        "Each user's train and validation items are "
        "masked before ranking the whole catalogue (as `twotower evaluate`).",
        to_png(fig),
    )


def _grouped_bars(ax, groups: list[str], series: list[tuple[str, list[float], dict]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, values, style) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label,
                      **style)  # fmt: skip
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def _series(runs: list[RunData], section: str, key: str) -> list[tuple[str, list, dict]]:
    """Each run's model, then the first run's popularity baseline."""
    grey = {"color": "0.6"}
    model = [(run.label if len(runs) > 1 else "model", run.diag.summary[section]["model"][key],
              {}) for run in runs]  # fmt: skip
    return [*model, ("popularity", runs[0].diag.summary[section]["popularity"][key], grey)]


def item_bucket_plot(runs: list[RunData]) -> Plot:
    first = runs[0].diag.summary
    k, b = first["k"], first["item_buckets"]
    groups = [f"{n}\n{items} items" for n, items in zip(b["names"], b["items"], strict=True)]
    fig, (recall_ax, share_ax) = _figure(2)
    _grouped_bars(recall_ax, groups, _series(runs, "item_buckets", "recall"))
    recall_ax.set(ylabel=f"recall@{k} of held-out pairs", title="recall by item popularity")
    share = [("training interactions", b["train_share"], {"color": "0.8"}),
             *_series(runs, "item_buckets", "share_of_recommendations")]  # fmt: skip
    _grouped_bars(share_ax, groups, share)
    share_ax.set(ylabel="share", title=f"share of top-{k} slots per bucket")
    return Plot(
        "item_buckets",
        "Recall by item popularity (head / torso / tail)",
        f"Head: the most popular items holding the first {b['head_share']:.0%} of the "
        f"training interactions; torso: up to {b['torso_share']:.0%}; tail: the rest, "
        "unseen items included (report.head_share, report.torso_share).",
        to_png(fig),
    )


def user_bucket_plot(runs: list[RunData]) -> Plot:
    first = runs[0].diag.summary
    k, b = first["k"], first["user_buckets"]
    groups = [f"{n} positives\n{users} users"
              for n, users in zip(b["names"], b["model"]["users"], strict=True)]  # fmt: skip
    fig, (ax,) = _figure(1, width=6.5)
    series = [s for s in _series(runs, "user_buckets", "recall") if len(s[1]) == len(groups)]
    _grouped_bars(ax, groups, series)
    ax.set(ylabel=f"mean recall@{k} per user",
           title="recall by user activity (training positives)")  # fmt: skip
    return Plot("user_buckets", "Recall by user activity",
                "Test users split at quantiles of their training positives "
                "(report.user_quantiles).", to_png(fig))  # fmt: skip


def coverage_plot(runs: list[RunData]) -> Plot:
    fig, (ax,) = _figure(1, width=6.5)
    for label, curve, style in _series(runs, "coverage", "curve"):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label, **style)
    k = runs[0].diag.summary["k"]
    ax.set(xlabel="j", ylabel="share of the catalogue", ylim=(0, None),
           title=f"catalogue coverage@j, j = 1..{k}")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Plot("coverage", "Catalogue coverage",
                "The share of all items that appear in at least one test user's top j.",
                to_png(fig))  # fmt: skip


def score_plot(runs: list[RunData]) -> Plot:
    fig, axes = _figure(len(runs), width=4.6 if len(runs) > 1 else 6.5)
    for ax, run in zip(axes, runs, strict=True):
        pos, rnd = run.diag.positive_scores, run.diag.random_scores
        both = np.concatenate([pos, rnd])
        bins = np.linspace(both.min(), both.max(), 50) if len(both) else 10
        ax.hist(rnd, bins=bins, density=True, alpha=0.55, color="0.55", label="random items")
        ax.hist(pos, bins=bins, density=True, alpha=0.55, color="C0", label="test positives")
        auc = run.diag.summary["scores"]["auc"]
        ax.set(xlabel="score u . v", ylabel="density", title=f"{run.label}: AUC {auc:.3f}")
        ax.legend(fontsize=8)
    return Plot("scores", "Scores of positives against random items",
                "u . v of every held-out (user, item) pair against the same users with "
                "uniformly drawn items; AUC = P(positive > random).", to_png(fig))  # fmt: skip


def field_weight_plot(runs: list[RunData]) -> Plot | None:
    having = [run for run in runs if run.field_weights]
    if not having:
        return None
    fig, axes = _figure(2 * len(having), width=3.8)
    for i, run in enumerate(having):
        for ax, side in zip(axes[2 * i : 2 * i + 2], ("user", "item"), strict=True):
            weights = run.field_weights.get(side, {})
            ax.barh(list(weights), list(weights.values()), color="C2")
            ax.invert_yaxis()
            ax.set(xlabel="mean SENet weight", title=f"{run.label}: {side} fields")
            ax.grid(alpha=0.3, axis="x")
    return Plot("field_weights", "SENet field weights",
                "Mean re-weighting of each field over every user / item (field_weights.json).",
                to_png(fig))  # fmt: skip


def task_weight_plot(runs: list[RunData]) -> Plot | None:
    having = [run for run in runs if run.tasks]
    if not having:
        return None
    fig, axes = _figure(len(having), width=5.0)
    for ax, run in zip(axes, having, strict=True):
        t = run.tasks
        keys = [k for k in ("fusion_weights", "task_weights", "learned_precision") if k in t]
        _grouped_bars(ax, list(t["tasks"]), [(k, t[k], {}) for k in keys])
        ax.set(title=f"{run.label}: tasks ({t.get('weighting', '')} weighting)")
    return Plot(
        "task_weights",
        "Multi-task weights",
        "Fusion weights of each task's vector in the served one, loss weights and, "
        "with uncertainty weighting, the learned precisions (tasks.json).",
        to_png(fig),
    )


def plots(runs: list[RunData]) -> list[Plot]:
    made = [training_plot(runs), metric_curves_plot(runs), item_bucket_plot(runs),
            user_bucket_plot(runs), coverage_plot(runs), score_plot(runs),
            field_weight_plot(runs), task_weight_plot(runs)]  # fmt: skip
    return [p for p in made if p is not None]


# ---- HTML ----------------------------------------------------------------------------------

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
    cols = _rankers(runs)
    ks = runs[0].ks
    rows = [[f"{m}@{k}", *(run.metrics[r].get(f"{m}@{k}", float("nan")) for _, run, r in cols)]
            for k in ks for m in METRIC_NAMES]  # fmt: skip
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
    title = f"twotower report: {runs[0].label}" if one else "twotower report: comparison"
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


def write(runs: list[RunData], out_dir: Path) -> dict:
    """index.html, one PNG per plot and diagnostics.json into `out_dir`; returns figures for the
    manifest."""
    made = plots(runs)
    for plot in made:
        (out_dir / f"{plot.name}.png").write_bytes(plot.png)
    (out_dir / "index.html").write_text(page(runs, made), encoding="utf-8")
    diagnostics = {run.label: run.diag.summary for run in runs}
    (out_dir / "diagnostics.json").write_text(json.dumps(diagnostics, indent=1))
    return {
        "plots": [p.name for p in made],
        "runs": [str(run.dirs.root) for run in runs],
        **({"auc": runs[0].diag.summary["scores"]["auc"]} if len(runs) == 1 else {}),
    }


def load_runs(run_dirs: list[str | Path], settings: BucketSettings) -> list[RunData]:
    """The runs, labelled `<sampler>/<run>`, or by their whole path where two labels clash."""
    dirs = [RunDirs.of(d) for d in run_dirs]
    labels = [d.label for d in dirs]
    clash = len(set(labels)) < len(labels)
    return [RunData.load(d, settings, str(d.root) if clash else "") for d in dirs]
