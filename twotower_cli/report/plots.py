"""The plots of `twotower report` and `twotower tune`, drawn on matplotlib's Agg canvas (Figure
objects, no pyplot and no display): each takes one run or several (a comparison), or a tune
study's trials, and returns a PNG."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from twotower_cli.core.layout import FILES
from twotower_cli.report.diagnostics import RunData

BASELINE_STYLE = {"linestyle": "--", "color": "0.45"}


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
        loss_ax.plot(h["epoch"], h["loss"], marker="o", ms=3, label=run.label)
        valid_key = next((c for c in h.columns if c.startswith("valid_recall@")), valid_key)
        if valid_key not in h:  # a refit on train + validation: no validation, last epoch kept
            continue
        line = valid_ax.plot(h["epoch"], h[valid_key], marker="o", ms=3, label=run.label)[0]
        best = h[valid_key].idxmax()
        valid_ax.scatter(h["epoch"][best], h[valid_key][best], s=80, facecolors="none",
                         edgecolors=line.get_color())  # fmt: skip
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss per epoch")
    valid_ax.set(xlabel="epoch", ylabel=valid_key or "validation recall",
                 title=f"{valid_key} (o = the kept epoch)" if valid_key else
                 "no validation: refit on train + valid, the last epoch kept")  # fmt: skip
    for ax in (loss_ax, valid_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a refit's validation panel has no curve
            ax.legend(fontsize=8)
    return Plot(
        "training",
        "Training curves",
        "Training loss and validation recall per epoch; "
        "the circled epoch's weights are the ones kept (early stopping).",
        to_png(fig),
    )


def rankers(runs: list[RunData]) -> list[tuple[str, RunData, str]]:
    """(legend label, run, ranker) of each curve: one run shows every ranker of its
    metrics.json; several show each run's model and the first run's baselines."""
    if len(runs) == 1:
        return [(name, runs[0], name) for name in runs[0].metrics]
    out = [(run.label, run, "model") for run in runs]
    return out + [(name, runs[0], name) for name in runs[0].metrics if name != "model"]


def metric_curves_plot(runs: list[RunData]) -> Plot:
    fig, axes = _figure(2)
    for label, run, ranker in rankers(runs):
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
    # run names are text, not TeX: a `$` in one (a sweep over `a=$x$`) is drawn as it is
    with rc_context({"text.parse_math": False}):
        made = [training_plot(runs), metric_curves_plot(runs), item_bucket_plot(runs),
                user_bucket_plot(runs), coverage_plot(runs), score_plot(runs),
                field_weight_plot(runs), task_weight_plot(runs)]  # fmt: skip
    return [p for p in made if p is not None]


def tune_plots(frame: pd.DataFrame, metric: str, params: list[str]) -> dict[str, bytes]:
    """`twotower tune`'s scores.png (each trial's validation score and the best so far) and
    params.png (the score against each parameter), from trials.csv's rows."""
    done = frame[frame["state"] == "COMPLETE"]
    fig, (ax,) = _figure(1, 6, 3.5)
    ax.plot(done["trial"], done[metric], "o", label="trial")
    ax.plot(done["trial"], done[metric].cummax(), "-", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="tune: validation score over trials")
    ax.legend()
    pngs = {FILES.plot("scores"): to_png(fig)}
    cols = min(3, len(params))
    rows = -(-len(params) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.ravel(), params, strict=False):
        values = done[name]
        if values.map(lambda v: isinstance(v, str | bool)).any():
            labels = sorted(values.astype(str).unique())
            ax.set_xticks(range(len(labels)), labels)
            values = values.astype(str).map({s: i for i, s in enumerate(labels)})
        ax.plot(values, done[metric], "o")
        ax.set(xlabel=name, ylabel=metric)
    for ax in axes.ravel()[len(params) :]:
        ax.axis("off")
    pngs[FILES.plot("params")] = to_png(fig)
    return pngs
