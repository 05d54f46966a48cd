"""The speed and scale benchmark (`make bench`, `python -m bench.run`; docs/bench.md).

run.py        the command line: sections to run, bench.json and bench.md (report.py)
sizes.py      how big each section runs (Sizes; QUICK for --quick)
timer.py      the one alternating timer every comparison goes through (alternate)
data.py       the synthetic data set and model the train and eval sections share
sections/     one module per --sections word (its __init__ lists them)
reference.py  the plain per-row training and per-user evaluation loops raced against
flops.py      the training step's matrix products, replayed as torch.mm
gpu.py        --device cuda: the device check and the exact search on the device
report.py     bench.json -> bench.md tables and scale.png
recbole/      RecBole itself on ML-1M in its own venv (`make bench-recbole`)
ml1m_baselines.py  popularity baselines on ML-1M (docs/published.md)
"""


def log(msg: str) -> None:
    """A progress line, flushed at once (the sections run for minutes)."""
    print(msg, flush=True)
