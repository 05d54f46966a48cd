"""The speed and scale benchmark: `make bench` (or `python -m bench.run [--quick]`).

Sections (pick with --sections; one module each in bench/sections/): `train` (twotower's
trainer against a per-row Dataset / DataLoader loop), `eval` (twotower's evaluation against a
per-user Python loop, and its exact search against a plain matrix multiply), `ann` (faiss
indexes on the vectors of a model trained on a million items), `scale` (the whole pipeline at
growing sizes, one `twotower <stage>` subprocess each), `dist` (`twotower train` samples/s with
train.nproc 1 and 2, one thread each, in-batch negatives global and local) and `peers`
(torch-rechub's DSSM beside twotower's default). `--device cuda` runs train, eval and ann on a
GPU (bench/gpu.py, `make bench-gpu`). Both sides of every comparison run in this process,
alternating (bench/timer.py), and the medians of the repeats are reported.
Writes outputs/bench/bench.json (flat keys), bench.md and scale.png (bench/report.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

# isort: off
import twotower_cli  # noqa: F401  (first: sets OpenMP's spin policy before torch loads)

# isort: on
import torch  # noqa: E402

from bench import gpu, log, report  # noqa: E402
from bench.data import Data  # noqa: E402
from bench.sections import ann, dist, peers, scale, train  # noqa: E402
from bench.sections import eval as evaluation  # noqa: E402
from bench.sizes import QUICK, Sizes  # noqa: E402
from twotower_cli.core.layout import FILES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    parser.add_argument("--sections", default="train,eval,ann,scale,dist,peers")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--cache-dir", default="data/synthetic")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument(
        "--update",
        action="store_true",
        help="add to the existing bench.json instead of starting afresh",
    )
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="DIR",
        help="also take the results of another run's output folder",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--device", default="cpu", help="cuda: train, eval and ann on the GPU (make bench-gpu)"
    )
    parser.add_argument("--ann-queries", type=int, default=None)
    parser.add_argument(
        "--ann-candidates",
        default=None,
        metavar="JSON",
        help="factory -> search settings, e.g. '{\"IVF4096,Flat\": [16, 32]}'",
    )
    parser.add_argument("--ann-source", choices=("trained", "clustered"), default="trained")
    parser.add_argument(
        "--ann-embed",
        default=None,
        metavar="DIR",
        help="a `twotower embed` output folder to take the ANN vectors from (default: train one)",
    )
    return parser.parse_args(argv)


def sizes_for(args: argparse.Namespace) -> Sizes:
    """Sizes() or QUICK, with the command line's overrides."""
    sizes = copy.deepcopy(QUICK if args.quick else Sizes())
    if args.repeats:
        sizes.repeats = args.repeats
    if args.train_steps:
        sizes.train_steps = args.train_steps
    if args.ann_queries:
        sizes.ann_queries = args.ann_queries
    if args.ann_candidates:
        sizes.ann_candidates = json.loads(args.ann_candidates)
    return sizes


def earlier_results(args: argparse.Namespace, out_dir: Path, header: dict) -> tuple[dict, list]:
    """bench.json's keys and the ANN rows this run starts from: the folder's own with
    --update, this run's `header` over them, then every --merge folder's."""
    old, ann_path = out_dir / FILES.bench_results, out_dir / FILES.bench_ann
    results: dict = json.loads(old.read_text()) if args.update and old.exists() else {}
    results |= header
    ann_rows: list = json.loads(ann_path.read_text()) if args.update and ann_path.exists() else []
    for other in map(Path, args.merge):
        results |= {k: v for k, v in json.loads((other / FILES.bench_results).read_text()).items()
                    if k not in ("quick", "threads", "started")}  # fmt: skip
        if (other / FILES.bench_ann).exists():
            ann_rows = json.loads((other / FILES.bench_ann).read_text())
    return results, ann_rows


def run_sections(sections: list[str], args: argparse.Namespace, sizes: Sizes, out_dir: Path,
                 ann_rows: list) -> tuple[dict, list]:  # fmt: skip
    """Each asked-for section in the benchmark's order; their keys, and the ANN rows (written
    to bench_ann.json when `ann` ran)."""
    results: dict = {}
    if {"train", "eval"} & set(sections):
        data = Data(sizes, args.cache_dir)
        if "train" in sections:
            results.update(train.section(data, sizes, args.device))
        if "eval" in sections:
            results.update(evaluation.section(data, sizes, args.device))
    if "ann" in sections:
        embed_dir = None
        if args.ann_source == "trained":
            embed_dir = Path(args.ann_embed) if args.ann_embed else ann.ann_model(
                sizes, out_dir, args.cache_dir, args.threads)  # fmt: skip
        ann_results, ann_rows = ann.section(sizes, args.ann_source, embed_dir, device=args.device)
        results.update(ann_results)
        (out_dir / FILES.bench_ann).write_text(json.dumps(ann_rows, indent=1))
    if "peers" in sections:
        results.update(peers.section(out_dir, args.threads, sizes.repeats, log))
    if "dist" in sections:
        results.update(dist.section(sizes, out_dir, args.cache_dir))
    if "scale" in sections:
        results.update(scale.section(sizes, out_dir, args.cache_dir))
    return results, ann_rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = sizes_for(args)
    sections = [s for s in args.sections.split(",") if s]
    device_name = "cpu"
    if args.device != "cpu":
        device_name = gpu.require_cuda()
        sizes.batch_size = gpu.GPU_BATCH
    torch.set_num_threads(args.threads)
    ann.set_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {"quick": args.quick, "threads": args.threads, "device": args.device,
              "device_name": device_name,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    results, ann_rows = earlier_results(args, out_dir, header)
    ran, ann_rows = run_sections(sections, args, sizes, out_dir, ann_rows)
    results |= ran
    (out_dir / FILES.bench_results).write_text(json.dumps(results, indent=1))
    report.write(results, ann_rows, out_dir, " ".join(sys.argv))
    log(f"bench: wrote {out_dir / FILES.bench_results} and {out_dir / FILES.bench_page}")


if __name__ == "__main__":
    main()
