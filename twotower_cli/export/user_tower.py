"""The user tower on its own: positional inputs for ONNX, the exporter, and the runtimes that
run it per request (`twotower serve`, `twotower export`).

A leaf for serving: `export` and the `serve` package import from here, never from each other.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.core.settings import RUNTIMES

log = logging.getLogger("twotower.serve")
OUTPUT = "user_vector"  # the ONNX graph's output name


def history_length(model: nn.Module) -> int:
    return int(getattr(model, "history_len", 0) or 0)


class UserTower(nn.Module):
    """The user half of a TwoTower model with positional inputs, as ONNX wants them."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.user_vectors(dict(zip(self.names, inputs, strict=True)))


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], names: list[str],
                path: Path, dynamo: bool = False) -> None:  # fmt: skip
    """The user tower to ONNX with a dynamic batch axis on every input and the output.

    dynamo=False uses the TorchScript exporter: deprecated since PyTorch 2.9 but about ten times
    faster to export this graph; dynamo=True (torch.export + onnxscript) gives the same vectors
    (tests/e2e/test_export.py checks both against PyTorch)."""
    tower = UserTower(model.eval(), names).eval()
    args = tuple(example[n] for n in names)
    if dynamo:
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # axis-naming notices
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree notice
            torch.onnx.export(
                tower, args, str(path), input_names=names, output_names=[OUTPUT],
                dynamic_shapes=(tuple({0: batch} for _ in names),), dynamo=True,
                external_data=False, verbose=False,
            )  # fmt: skip
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own notice
        torch.onnx.export(
            tower, args, str(path), input_names=names, output_names=[OUTPUT],
            dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT]}, dynamo=False,
        )  # fmt: skip


def onnx_tower(model: nn.Module, example: dict, names: list[str]) -> Callable:
    """The tower exported to a temporary ONNX file and loaded into one onnxruntime session."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILES.user_tower
        export_onnx(model, example, names, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda *ts: session.run(None, {n: t.numpy() for n, t in zip(names, ts, strict=True)})[0]


def traced_tower(model: nn.Module, example: dict, names: list[str]) -> Callable:
    """The tower traced and frozen by TorchScript."""
    args = tuple(example[n] for n in names)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about Python values
        traced = torch.jit.freeze(torch.jit.trace(UserTower(model, names).eval(), args))
    return lambda *ts: traced(*ts).numpy()


BUILDERS: dict[str, Callable] = {"onnxruntime": onnx_tower, "torchscript": traced_tower}


def fast_user_tower(model: nn.Module, example: dict[str, torch.Tensor],
                    runtime: str = "auto") -> tuple[Callable, list[str], str]:  # fmt: skip
    """The user tower as a function of positional tensors returning numpy vectors, run by
    onnxruntime, TorchScript or eager PyTorch. A single request's forward pass is mostly fixed
    per-call overhead: measured here per call (batch 1) eager ~390 us, TorchScript ~190 us,
    onnxruntime ~80 us. `auto` takes the first that loads and reproduces the eager vectors to
    1e-5 (the export test's tolerance) on two batch sizes."""
    if runtime not in RUNTIMES:
        raise TwoTowerError(f"serve.runtime: {runtime!r} not in {RUNTIMES}")
    names = list(example)
    eager_tower = UserTower(model, names).eval()

    def eager(*ts: torch.Tensor) -> np.ndarray:
        return eager_tower(*ts).numpy()

    order = list(BUILDERS) if runtime == "auto" else [runtime] if runtime != "eager" else []
    args = tuple(example[n] for n in names)
    with torch.inference_mode():
        want = eager(*args)
    for name in order:
        try:
            fn = BUILDERS[name](model, example, names)
            with torch.inference_mode():
                ok = np.allclose(fn(*args), want, rtol=0, atol=1e-5) and np.allclose(
                    fn(*(a[1:] for a in args)), want[1:], rtol=0, atol=1e-5)  # fmt: skip
        except Exception as err:  # noqa: BLE001 -- a runtime that cannot run it is skipped
            log.warning("user tower on %s failed (%s)", name, err)
            continue
        if ok:
            return fn, names, name
        log.warning("user tower on %s differs from PyTorch; not used", name)
    return eager, names, "eager"
