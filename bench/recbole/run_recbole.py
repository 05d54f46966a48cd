"""RecBole 1.2.1 itself on MovieLens-1M under its published general-recommendation benchmark.

Runs inside `.venv-recbole` (`make recbole-env`), not twotower's venv. Each model goes through
RecBole's own pipeline, step for step as `recbole.quick_start.objective_function` (what RecBole's
hyper-parameter benchmark ran) and `run_recbole` do it: `Config` -> `init_seed` ->
`create_dataset` -> `data_preparation` -> `init_seed` -> model -> `Trainer.fit` (early stopping
on validation NDCG@10) -> `Trainer.evaluate(test, load_best_model=True)`. The config is RecBole's
`ml-1m_general.yaml` plus each model's published hyper-parameters (docs/recbole-protocol.md);
everything else stays at RecBole's defaults (seed 2020, RS 8:1:1 per user, full ranking, ...).
The only changes: CPU, `data_path` (data/raw, filled by fetch_ml1m.py), the checkpoint and log
folders (under the output folder) and no progress bars.

Writes `<out>/<model>.json` (default outputs/bench/recbole/). `--table` prints the Markdown table
of every JSON there beside RecBole's published numbers.

Usage:
  python bench/recbole/run_recbole.py [--threads 2] [--max-epochs N] [--set KEY=VALUE] EASE BPR
  python bench/recbole/run_recbole.py --table
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

# RecBole's ml-1m_general.yaml (asset/hyper_tune_configs/general/ml-1m_general.md; the same
# text as benchmark/md/ml-1m_general.md at 5ebaece, the commit before "Remove benchmark").
ML1M_GENERAL = {
    "field_separator": "\t",
    "seq_separator": " ",
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "RATING_FIELD": "rating",
    "NEG_PREFIX": "neg_",
    "LABEL_FIELD": "label",
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    "val_interval": {"rating": "[3,inf)"},
    "unused_col": {"inter": ["rating"]},
    "user_inter_num_interval": "[10,inf)",
    "item_inter_num_interval": "[10,inf)",
    "epochs": 500,
    "train_batch_size": 4096,
    "eval_batch_size": 40960000,
    "valid_metric": "NDCG@10",
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "dynamic": False},
}
# RecBole's defaults (recbole/properties/overall.yaml, v1.2.1) that define the protocol, written
# out so the JSON and a reader see them; they equal what RecBole would use anyway.
PROTOCOL_DEFAULTS = {
    "seed": 2020,
    "reproducibility": True,
    "eval_args": {
        "split": {"RS": [0.8, 0.1, 0.1]},
        "group_by": "user",
        "order": "RO",
        "mode": "full",
    },
    "metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision"],
    "topk": [10],
    "valid_metric_bigger": True,
    "eval_step": 1,
    "stopping_step": 10,
    "learner": "adam",
    "weight_decay": 0.0,
    "metric_decimal_place": 4,
}
# Published hyper-parameters: benchmark/hyper/general/<Model>-ml-1m_general.md at 5ebaece.
# "embedding_size: 64" is the benchmark's fairness note (ml-1m_general.md).
HYPER = {
    "EASE": {"reg_weight": 1000.0},
    # the .md's "Best parameters" block says 5e-4, but its hyperopt log picks 1e-4 ("best
    # params: {'learning_rate': 0.0001}", valid NDCG@10 0.1982 for both) and the published
    # test numbers (leaderboard: 0.1725 / 0.2407) are lr 1e-4's; lr 5e-4 gave 0.1734 / 0.2396
    "BPR": {"learning_rate": 1e-4, "embedding_size": 64},
    "LightGCN": {"learning_rate": 5e-4, "n_layers": 1, "reg_weight": 0.01, "embedding_size": 64},
    "ItemKNN": {"k": 250, "shrink": 1.2},
    "Pop": {},
}
# Published test metrics @10 (same files; the leaderboard json has LightGCN NDCG 0.2478).
PUBLISHED = {
    "EASE": {"recall@10": 0.2139, "mrr@10": 0.4808, "ndcg@10": 0.2865, "hit@10": 0.7837,
             "precision@10": 0.2082},
    "BPR": {"recall@10": 0.1725, "mrr@10": 0.4221, "ndcg@10": 0.2407, "hit@10": 0.7131,
            "precision@10": 0.1802},
    "LightGCN": {"recall@10": 0.1823, "mrr@10": 0.4312, "ndcg@10": 0.2476, "hit@10": 0.7316,
                 "precision@10": 0.1835},
    "ItemKNN": {"recall@10": 0.1723, "mrr@10": 0.4254, "ndcg@10": 0.2389, "hit@10": 0.7139,
                "precision@10": 0.1752},
    "Pop": {"recall@10": 0.0699, "mrr@10": 0.1890, "ndcg@10": 0.1006, "hit@10": 0.4572,
            "precision@10": 0.0866},
}  # fmt: skip
PUBLISHED_VALID_NDCG = {"EASE": 0.2308, "BPR": 0.1982, "LightGCN": 0.2065, "ItemKNN": 0.1982,
                        "Pop": 0.0883}  # fmt: skip
METRICS = ["recall@10", "ndcg@10", "mrr@10", "hit@10", "precision@10"]


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="RecBole 1.2.1 on ML-1M, published setup")
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(HYPER)}")
    ap.add_argument("--threads", type=int, default=2, help="torch and BLAS threads (default 2)")
    ap.add_argument(
        "--data-path",
        type=Path,
        default=Path("data/raw"),
        help="folder with ml-1m/ml-1m.inter (bench/recbole/fetch_ml1m.py)",
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/recbole"))
    ap.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap the published 500 epochs (recorded as a deviation)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (a deviation), e.g. learning_rate=5e-4",
    )
    ap.add_argument("--table", action="store_true", help="print the table of <out>/*.json")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in HYPER]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(HYPER)}")
    if not args.table and not args.models:
        ap.error("name at least one model, or --table")
    return args


def install_shims() -> list[str]:
    """Compatibility shims for RecBole 1.2.1 on torch 2.13 (site-packages stay untouched)."""
    import torch

    shims = []
    original_load = torch.load

    def load(*args, **kwargs):
        # torch >= 2.6 loads with weights_only=True by default; RecBole's own checkpoint (the
        # best model, reloaded by Trainer.evaluate) pickles its Config object
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load
    shims.append("torch.load defaults to weights_only=False (RecBole reloads its own checkpoint)")
    return shims


def config_for(model: str, args: argparse.Namespace, out: Path) -> tuple[dict, dict]:
    config = {**ML1M_GENERAL, **PROTOCOL_DEFAULTS, **HYPER[model]}
    deviations = {}
    if args.max_epochs is not None and args.max_epochs < config["epochs"]:
        deviations["epochs"] = {"published": config["epochs"], "used": args.max_epochs}
        config["epochs"] = args.max_epochs
    for item in args.set:
        key, _, value = item.partition("=")
        deviations[key] = {"published": config.get(key), "used": parse_value(value)}
        config[key] = parse_value(value)
    config.update(
        {
            "model": model,
            "dataset": "ml-1m",
            "data_path": str(args.data_path.resolve()),
            "checkpoint_dir": str((out / "saved").resolve()),
            "use_gpu": False,
            "show_progress": False,
        }
    )
    return config, deviations


def run_model(model: str, args: argparse.Namespace, shims: list[str]) -> dict:
    import numpy as np
    import pandas as pd
    import recbole
    import scipy
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    out = args.out.resolve()
    config_dict, deviations = config_for(model, args, out)
    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    t_all = time.perf_counter()

    config = Config(model=model, dataset="ml-1m", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_s = time.perf_counter() - t0

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    t0 = time.perf_counter()
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    init_s = time.perf_counter() - t0  # EASE and ItemKNN fit their closed form here
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)

    epoch_s, valid_s, valid_scores = [], [], []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a, **kw):
        t = time.perf_counter()
        result = train_epoch(*a, **kw)
        epoch_s.append(time.perf_counter() - t)
        return result

    def timed_valid(*a, **kw):
        t = time.perf_counter()
        score, result = valid_epoch(*a, **kw)
        valid_s.append(time.perf_counter() - t)
        valid_scores.append(score)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    t0 = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=True)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True)
    test_s = time.perf_counter() - t0
    checkpoint = Path(trainer.saved_model_file)
    checkpoint.unlink(missing_ok=True)

    epochs_run = len(epoch_s)
    best = max(valid_scores) if valid_scores else None
    # RecBole keeps the last epoch whose score is >= the best so far (its early_stopping)
    best_epoch = max(i for i, s in enumerate(valid_scores) if s == best) if valid_scores else None
    if trainer.epochs <= 1:
        stopped = "single pass (TraditionalTrainer)"
    elif epochs_run < trainer.epochs:
        stopped = f"early stopping (stopping_step {config['stopping_step']})"
    else:
        stopped = "epoch limit"
    train_ds, valid_ds, test_ds = (d._dataset for d in (train_data, valid_data, test_data))
    result = {
        "model": model,
        "recbole_version": recbole.__version__,
        "date": started.isoformat(timespec="seconds"),
        "threads": args.threads,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
        },
        "dataset": {
            "users": dataset.user_num - 1,
            "items": dataset.item_num - 1,
            "interactions": dataset.inter_num,
            "recbole_user_num": dataset.user_num,
            "recbole_item_num": dataset.item_num,
            "sparsity": round(dataset.sparsity, 6),
            "train_interactions": train_ds.inter_num,
            "valid_interactions": valid_ds.inter_num,
            "test_interactions": test_ds.inter_num,
        },
        "hyper_parameters": {k: config[k] for k in HYPER[model]},
        "deviations": deviations,
        "shims": shims,
        "best_valid_score": best_valid_score,
        "best_valid_result": dict(best_valid_result or {}),
        "test": {k: float(v) for k, v in test_result.items()},
        "published_test": PUBLISHED[model],
        "published_valid_ndcg@10": PUBLISHED_VALID_NDCG[model],
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "epoch_limit": trainer.epochs,
        "stopped_by": stopped,
        "train_wall_s": round(init_s + fit_s, 2),
        "model_init_s": round(init_s, 2),
        "fit_s": round(fit_s, 2),
        "train_epoch_s_total": round(sum(epoch_s), 2),
        "valid_s_total": round(sum(valid_s), 2),
        "s_per_epoch": round(fit_s / epochs_run, 3) if epochs_run else None,
        "train_s_per_epoch": round(sum(epoch_s) / epochs_run, 3) if epochs_run else None,
        "valid_s_per_epoch": round(sum(valid_s) / len(valid_s), 3) if valid_s else None,
        "data_s": round(data_s, 2),
        "test_s": round(test_s, 2),
        "total_wall_s": round(time.perf_counter() - t_all, 2),
        "valid_ndcg@10_by_epoch": [round(float(s), 4) for s in valid_scores],
        "config": {
            k: config[k] for k in [*ML1M_GENERAL, *PROTOCOL_DEFAULTS, "device"] if k in config
        },
    }
    result["config"]["device"] = str(result["config"].get("device"))
    return result


def fmt_s(x) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    order = {m: i for i, m in enumerate(HYPER)}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))
    head = (
        "| model | Recall@10 (pub.) | NDCG@10 (pub.) | MRR@10 | Hit@10 | Precision@10 "
        "| epochs (best) | train s | s/epoch | threads | load avg start/end | notes |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        t, p = r["test"], r["published_test"]
        dev = "; ".join(f"{k} {v['used']} (published {v['published']})"
                        for k, v in r["deviations"].items())  # fmt: skip
        best = "-" if r["best_epoch"] is None else r["best_epoch"]
        per_epoch = r["s_per_epoch"] if r.get("epoch_limit", 2) > 1 else None  # single pass
        lines.append(
            f"| {r['model']} | {t['recall@10']:.4f} ({p['recall@10']:.4f}) "
            f"| {t['ndcg@10']:.4f} ({p['ndcg@10']:.4f}) | {t['mrr@10']:.4f} | {t['hit@10']:.4f} "
            f"| {t['precision@10']:.4f} | {r['epochs_run']} ({best}) | {fmt_s(r['train_wall_s'])} "
            f"| {fmt_s(per_epoch)} | {r['threads']} "
            f"| {r['loadavg_start'][0]:.1f} / {r['loadavg_end'][0]:.1f} | {dev or '-'} |"
        )
    if rows:
        d = rows[0]["dataset"]
        lines.append(
            f"\nML-1M after rating >= 3 and 10-core: {d['users']:,} users, {d['items']:,} items, "
            f"{d['interactions']:,} interactions (RecBole {rows[0]['recbole_version']}, "
            f"{rows[0]['date'][:10]})."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    inter = args.data_path / "ml-1m" / "ml-1m.inter"
    if not inter.exists():
        print(f"run_recbole: {inter} missing: run bench/recbole/fetch_ml1m.py", file=sys.stderr)
        return 1
    # BLAS threads (EASE's inverse, ItemKNN) must be set before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_path = args.data_path.resolve()
    args.out = args.out.resolve()
    os.chdir(args.out)  # RecBole writes ./log/ and ./log_tensorboard/ into the working folder
    shims = install_shims()
    for model in args.models:
        result = run_model(model, args, shims)
        path = args.out / f"{model}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        t, pub = result["test"], PUBLISHED[model]
        print(
            f"{model}: test recall@10 {t['recall@10']:.4f} ndcg@10 {t['ndcg@10']:.4f} "
            f"(published {pub['recall@10']:.4f} / {pub['ndcg@10']:.4f}), "
            f"{result['epochs_run']} epochs, train {result['train_wall_s']:.1f}s -> {path}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
