"""Each sampler's settings (`conf/sampler/<name>.yaml`, `twotower sample`): its `_target_` and
the arguments of that sampler's `__init__`, with their bounds in field metadata as
core/settings.py's. pipeline/config.py registers each as the schema its YAML names
(`/schema/sampler@_here_: <name>`, types checked at composition) and checks the bounds of the
one whose `_target_` the config names before a stage runs; the samplers keep their own guards
for callers from Python, in the same words."""

from __future__ import annotations

from dataclasses import dataclass, field

from twotower_cli.core.errors import ConfigError
from twotower_cli.samplers.base import LOGQ_MODES

TARGET = "twotower_cli.samplers."
LOGQ = {"choices": LOGQ_MODES}


def explicit_logq(value: str, key: str) -> None:
    """Explicit negatives are corrected by their exact frequency or not at all."""
    if value not in LOGQ_MODES:
        raise ConfigError(f"{key}: {value!r} not in {LOGQ_MODES}")
    if value == "streaming":
        raise ConfigError(f"{key}: streaming applies to in-batch samplers only")


@dataclass
class InBatchSettings:
    """`sampler=inbatch`: the batch's other positives, plus n_uniform uniform items a batch."""

    _target_: str = TARGET + "InBatchSampler"
    logq: str = field(default="exact", metadata=LOGQ)
    alpha: float = 0.05
    n_uniform: int = field(default=1024, metadata={"ge": 0})


@dataclass
class MixedSettings:
    """`sampler=mixed`: in-batch plus n_uniform (at least one) uniform items a batch."""

    _target_: str = TARGET + "MixedSampler"
    n_uniform: int = field(default=1024, metadata={"ge": 1})
    logq: str = field(default="exact", metadata=LOGQ)
    alpha: float = 0.05


@dataclass
class PopularitySettings:
    """`sampler=popularity`: n_neg negatives a positive, drawn by popularity."""

    _target_: str = TARGET + "PopularitySampler"
    n_neg: int = field(default=4, metadata={"ge": 1})
    mode: str = field(default="power", metadata={"choices": ("power", "rank")})
    alpha: float = 0.75
    seed: int = 0
    logq: str = field(default="exact", metadata={"check": explicit_logq})


@dataclass
class RandomSettings:
    """`sampler=random`: n_neg uniform negatives a positive."""

    _target_: str = TARGET + "RandomNegativeSampler"
    n_neg: int = field(default=4, metadata={"ge": 1})
    seed: int = 0
    logq: str = field(default="exact", metadata={"check": explicit_logq})


@dataclass
class HardSettings:
    """`sampler=hard`: hard negatives (by rule or mined from an earlier run) and uniform ones;
    the sampler itself checks that band's first is at most its last."""

    _target_: str = TARGET + "HardNegativeSampler"
    n_neg: int = field(default=4, metadata={"ge": 1})
    kind: str = field(default="rule", metadata={"choices": ("rule", "mined")})
    hard_ratio: float = field(default=0.5, metadata={
        "ge": 0.0, "le": 1.0, "say": "{key} must be in [0, 1], got {value}"})  # fmt: skip
    attribute: str | None = None
    source_run: str = "inbatch/dssm"
    source_dir: str | None = None
    band: list[int] = field(default_factory=lambda: [101, 500], metadata={"each_ge": 1})
    seed: int = 0
    logq: str = field(default="exact", metadata={"check": explicit_logq})


@dataclass
class UniformSettings:
    """`sampler=uniform`: n_negatives uniform items a batch, shared by every row."""

    _target_: str = TARGET + "UniformSampler"
    n_negatives: int = field(default=1024, metadata={"ge": 1})


@dataclass
class FullSettings:
    """`sampler=full`: the whole catalogue, up to max_items items."""

    _target_: str = TARGET + "CatalogueSampler"
    max_items: int = field(default=50_000, metadata={"ge": 1})


# conf/sampler/<name>.yaml -> its settings
SAMPLERS = {"inbatch": InBatchSettings, "mixed": MixedSettings, "popularity": PopularitySettings,
            "random": RandomSettings, "hard": HardSettings, "uniform": UniformSettings,
            "full": FullSettings}  # fmt: skip
