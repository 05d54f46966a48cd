"""The self-describing model checkpoint (`model.pt`, written by `twotower train`, read by
embed, evaluate, export and serve).

It holds the weights, the tower's registry key (models.TOWERS) with its plain arguments, the
feature schema and the resolved config, so a model is rebuilt from the file alone. Loading is
safe: `torch.load(weights_only=True)` unpickles only tensors and plain containers, the tower
class comes from the fixed registry (never from a name in the file), and every argument must
be a plain value. A file that is not such a checkpoint, or whose weights are not finite, is a
TwoTowerError naming the file and the command that rewrites it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from twotower_cli.core.errors import ConfigError, TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.models import TOWERS, tower_key
from twotower_cli.models.base import TwoTower

FORMAT = 2  # bump when the layout below changes; older files are refused, not misread
PLAIN = (str, int, float, bool, type(None))


def model_args(model_cfg: dict) -> tuple[str, dict]:
    """A resolved `model` config -> (registry key, constructor arguments)."""
    args = dict(model_cfg)
    return tower_key(str(args.pop("_target_", ""))), args


def build(key: str, args: dict, schema: dict) -> TwoTower:
    """The registered tower `key` built from plain `args`; ConfigError for a bad value."""
    if key not in TOWERS:
        raise ConfigError(f"model: {key!r} is not a twotower tower; known: {sorted(TOWERS)}")
    _require_plain(args, "model")
    try:
        return TOWERS[key](schema, **args)
    except TypeError as err:  # an argument the tower does not take
        raise ConfigError(f"model: {err}") from None


def _require_plain(value, where: str) -> None:
    """Only str/int/float/bool/None in (nested) lists and dicts with string keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string")
            _require_plain(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _require_plain(v, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise ConfigError(f"{where}: {type(value).__name__} is not a plain value")


def save(path: Path, model: TwoTower, key: str, args: dict, schema: dict, config: dict) -> None:
    torch.save({"format": FORMAT, "tower": key, "args": args, "schema": schema,
                "state_dict": model.state_dict(), "config": config}, path)  # fmt: skip


def load(path: Path, data: bytes | None = None) -> tuple[TwoTower, dict]:
    """(model in eval mode, the checkpoint dict) from `model.pt` (`data`: its bytes, already read
    and checked by the caller; `path` then only names it)."""
    rerun = "rerun `twotower train`"
    try:
        source = io.BytesIO(data) if data is not None else path
        ckpt = torch.load(source, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise TwoTowerError(f"{path}: missing; {rerun}") from None
    except Exception as err:  # noqa: BLE001 -- truncated, flipped or foreign bytes
        raise TwoTowerError(f"{path}: not a readable checkpoint ({_first_line(err)}); "
                            f"{rerun}") from None  # fmt: skip
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TwoTowerError(f"{path}: not a twotower checkpoint of format {FORMAT}; {rerun}")
    try:
        _require_plain(ckpt.get("schema"), "schema")
        # built on the meta device: a schema or arguments that declare far larger tables than
        # the file holds allocate nothing before the shapes below refuse them
        with torch.device("meta"):
            model = build(str(ckpt.get("tower")), dict(ckpt.get("args") or {}), ckpt["schema"])
        _check_shapes(model, ckpt["state_dict"])
        # assign: the model takes the loaded tensors, so the weights are held once, not twice
        model.load_state_dict(ckpt["state_dict"], assign=True)
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise TwoTowerError(f"{path}: does not rebuild its model ({_first_line(err)}); "
                            f"{rerun}") from None  # fmt: skip
    bad = [n for n, t in ckpt["state_dict"].items() if t.is_floating_point() and
           not bool(torch.isfinite(t).all())]  # fmt: skip
    if bad:
        raise TwoTowerError(f"{path}: non-finite weights in {bad[0]}; {rerun}")
    return model.eval(), ckpt


def _check_shapes(model: TwoTower, weights) -> None:
    """Every weight the (meta) model declares is in the file with that shape and dtype."""
    if not isinstance(weights, dict):
        raise TypeError("state_dict is not a dict")
    for name, want in model.state_dict().items():
        got = weights.get(name)
        if not isinstance(got, torch.Tensor):
            raise KeyError(f"no tensor {name}")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"{name} is {tuple(got.shape)} {got.dtype}, the schema and arguments "
                             f"declare {tuple(want.shape)} {want.dtype}")  # fmt: skip


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def load_dir(train_dir: Path, data: bytes | None = None) -> tuple[TwoTower, dict]:
    """`load` of a train stage dir's `model.pt` (serve's `load_model` callable, given the bytes
    it read and hashed)."""
    return load(Path(train_dir) / FILES.model, data)
