"""Run several configurations through `twotower run` and tabulate them in Markdown.

`make compare-models` / `make compare-samplers` call it; any set of overrides works:

    python -m twotower_cli.tools.compare --name models --runs "model=dssm" "model=senet" \
        --seeds 0 1 2 -- sampler=inbatch

Each labelled run trains under `paths.run=cmp-<name>-<label>-s<seed>` so runs share the same
preprocess output; the table has the mean over seeds of each metric, train seconds and
parameters, and goes to `<paths.out>/compare/<name>.md` (and `.json`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from twotower_cli.artifacts.store import read_manifest
from twotower_cli.core.layout import FILES, Layout

COLUMNS = [f"{m}@{k}" for k in (10, 20, 50) for m in ("recall", "precision", "ndcg")]


def run_one(overrides: list[str], run_name: str, out: str) -> dict:
    cmd = [sys.executable, "-m", "twotower_cli.cli", "run", *overrides,
           f"paths.run={run_name}", f"paths.out={out}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compare: `{' '.join(cmd[2:])}` failed:\n{proc.stderr[-3000:]}")
    root = [str(p) for p in Layout.find_runs(out, run_name)]
    if len(root) != 1:
        raise SystemExit(f"compare: expected one run dir for {run_name}, found {root}")
    L = Layout.of_run(root[0], out)
    metrics = json.loads(L.metrics.read_text())
    train = read_manifest(L.train)
    return {"metrics": metrics, "train_seconds": train["seconds"],
            "parameters": train["figures"].get("parameters")}  # fmt: skip


def label_of(overrides: str) -> str:
    return overrides.replace(" ", "_").replace("=", "-").replace("/", "-") or "default"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="one quoted override list per run")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="outputs")
    ap.add_argument("common", nargs="*", help="overrides shared by every run (after --)")
    args = ap.parse_args(argv)
    rows, baseline = [], None
    for spec in args.runs:
        label = label_of(spec)
        results = []
        for seed in args.seeds:
            name = f"cmp-{args.name}-{label}-s{seed}"
            print(f"compare: {spec} seed={seed}", flush=True)
            results.append(run_one([*args.common, *spec.split(), f"seed={seed}"], name, args.out))
        mean = {c: float(np.mean([r["metrics"]["model"][c] for r in results])) for c in COLUMNS}
        std20 = float(np.std([r["metrics"]["model"]["recall@20"] for r in results]))
        seconds = float(np.mean([r["train_seconds"] for r in results]))
        rows.append({"run": spec, **mean, "recall@20_std": std20, "train_seconds": seconds,
                     "parameters": results[0]["parameters"]})  # fmt: skip
        baseline = baseline or results[0]["metrics"]["popularity"]
    rows.append({"run": "popularity baseline", **{c: baseline[c] for c in COLUMNS},
                 "recall@20_std": 0.0, "train_seconds": 0.0, "parameters": 0})  # fmt: skip
    out_dir = Path(args.out) / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = to_markdown(rows, args.seeds, args.common)
    md_name, json_name = FILES.compare_tables(args.name)
    (out_dir / md_name).write_text(table + "\n")
    (out_dir / json_name).write_text(json.dumps(rows, indent=1))
    print(table)


def to_markdown(rows: list[dict], seeds: list[int], common: list[str]) -> str:
    head = ["run", *COLUMNS, "train s", "params"]
    lines = [
        f"Mean over seeds {seeds}; common overrides: `{' '.join(common) or '(none)'}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [f"`{r['run']}`", *(f"{r[c]:.4f}" for c in COLUMNS)]
        cells += [f"{r['train_seconds']:.1f}", f"{r['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
