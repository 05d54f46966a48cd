"""How near the training step runs to the machine's matrix-multiply speed (`make bench`,
section `train`: `train_gemm_fraction`).

`record_gemms` runs one training step under a dispatch mode that notes the shape of every
matrix multiply the step issues (forward and backward of both towers and of the score matrix,
whatever the model and loss are); `time_gemms` replays exactly those shapes as plain `torch.mm`
calls on preallocated tensors. The step's model FLOPs per second over the replay's FLOPs per
second is then the replay's seconds over the step's seconds.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.timer import sync

_aten = torch.ops.aten
# (m, k, n) of a plain product [m, k] @ [k, n]; bmm counts each matrix of the batch
_SHAPES = {
    _aten.mm.default: lambda a: [(a[0].shape[0], a[0].shape[1], a[1].shape[1])],
    _aten.addmm.default: lambda a: [(a[1].shape[0], a[1].shape[1], a[2].shape[1])],
    _aten.bmm.default: lambda a: [(a[0].shape[1], a[0].shape[2], a[1].shape[2])] * a[0].shape[0],
}


class _GemmRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SHAPES:
            self.shapes.extend(_SHAPES[func](args))
        return func(*args, **(kwargs or {}))


def record_gemms(step) -> list[tuple[int, int, int]]:
    """The (m, k, n) of every matrix multiply `step()` runs (call it with a forward and a
    backward inside)."""
    with _GemmRecorder() as rec:
        step()
    return rec.shapes


def gemm_flops(shapes: list[tuple[int, int, int]]) -> float:
    """2 m k n per product (a multiply and an add per term)."""
    return float(sum(2 * m * k * n for m, k, n in shapes))


class GemmReplay:
    """The recorded shapes as plain torch.mm into preallocated outputs (no allocation, no
    autograd): what the hardware gives for the step's matrix work alone."""

    def __init__(
        self, shapes: list[tuple[int, int, int]], device: str = "cpu", seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.device = device
        self.ops = [(torch.randn(m, k, generator=gen).to(device),
                     torch.randn(k, n, generator=gen).to(device),
                     torch.empty(m, n, device=device)) for m, k, n in shapes]  # fmt: skip
        self.flops = gemm_flops(shapes)

    def run(self, steps: int) -> float:
        """Seconds for `steps` replays of the step's products (the device synchronised)."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            for a, b, out in self.ops:
                torch.mm(a, b, out=out)
        sync(self.device)
        return time.perf_counter() - start
