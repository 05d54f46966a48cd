"""The benchmark on a CUDA device (`make bench-gpu`, i.e. `python -m bench.run --device cuda`):
training with a large batch (`train.device=cuda`) beside torch.mm on the same device, the exact
search of evaluation on the device, and exact search on the trained ANN vectors. Writes the
same keys as the CPU run plus `device`, into its own folder (outputs/bench-gpu), so CPU and GPU
results never mix. faiss here is the CPU build: the approximate indexes stay on the CPU run.
"""

from __future__ import annotations

import numpy as np
import torch

GPU_BATCH = 8192


def require_cuda() -> str:
    """The CUDA device's name; one line and exit status 2 when there is none."""
    if not torch.cuda.is_available():
        raise SystemExit(
            f"bench: --device cuda needs a CUDA GPU; torch {torch.__version__} sees none here "
            "(run `make bench` for the CPU benchmark)"
        )
    return torch.cuda.get_device_name(0)


def exact_top(
    items: np.ndarray,
    u: np.ndarray,
    exclude: np.ndarray,
    k: int,
    n_items: int,
    device: str,
    chunk: int = 4096,
) -> np.ndarray:
    """retrieval.exact_top_unseen on `device`: scores by torch.mm in chunks of users, excluded
    (row key = row * (n_items + 1) + item) set to -inf, torch.topk; ids 1..n, -1 when a row has
    fewer than k unseen items."""
    V = torch.as_tensor(np.ascontiguousarray(items, np.float32), device=device)
    U = torch.as_tensor(np.ascontiguousarray(u, np.float32), device=device)
    width, k_eff = n_items + 1, min(k, len(V))
    keys = torch.as_tensor(exclude, device=device)
    out = np.full((len(U), k), -1, dtype=np.int64)
    with torch.no_grad():
        for s in range(0, len(U), chunk):
            e = min(s + chunk, len(U))
            sc = U[s:e] @ V.T
            lo, hi = np.searchsorted(exclude, [s * width, e * width])
            part = keys[lo:hi]
            sc[part // width - s, part % width - 1] = -torch.inf
            val, idx = torch.topk(sc, k_eff, dim=1)
            ids = torch.where(torch.isfinite(val), idx + 1, -1)
            out[s:e, :k_eff] = ids.cpu().numpy()
    return out
