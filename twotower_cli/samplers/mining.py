"""Hard-negative mining for `sampler=hard sampler.kind=mined` (run by `twotower sample`): each
user's items ranked `band` (1-based, inclusive) by an earlier run's embeddings, the "similar
but not too similar" band of Facebook EBR / Baidu Mobius. The sampler only draws from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.retrieval.search import build_index, search


def mined_band(source_dir: str | None, source_run: str | None, n_items: int,
               band: tuple[int, int]) -> dict[str, np.ndarray]:  # fmt: skip
    """{"users": the source run's user ids, "items": [users, band width] item ids}; a one-line
    error naming the run to make first when the source embeddings are missing."""
    src = Path(source_dir or "")
    u_path, ids_path, v_path = (
        src / FILES.vectors("user"),
        src / FILES.ids("user"),
        src / FILES.vectors("item"),
    )
    if source_dir is None or not all(p.exists() for p in (u_path, ids_path, v_path)):
        sampler, _, run = str(source_run).partition("/")
        raise TwoTowerError(
            f"sampler=hard kind=mined: no embeddings at {src} (sampler.source_run="
            f"{source_run}): run `twotower run sampler={sampler} paths.run={run}` first"
        )
    items = np.load(v_path)
    if len(items) != n_items:
        raise TwoTowerError(f"{v_path}: {len(items)} items, data has {n_items}")
    first, last = band
    last = min(last, n_items)
    top = search(build_index(items, "Flat"), np.load(u_path), last)
    return {"users": np.load(ids_path), "items": top[:, first - 1 : last]}
