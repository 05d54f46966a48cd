"""The front door: `twotower <stage> [hydra overrides]`. It only routes: the stage word becomes
the `stage=` override and Hydra does the rest (overrides, -m sweeps, --cfg job)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from twotower_cli.artifacts import mark_stage_start, prune_empty
from twotower_cli.errors import TwoTowerError

# absolute: a relative config_path becomes a package path once installed as a script
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
STAGE_WORDS = ("preprocess", "sample", "train", "embed", "index", "evaluate", "run", "serve",
               "export", "tune")  # fmt: skip
# faiss announces which SIMD build it loaded at INFO; not news to a user
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
# Hydra's flags that take a value (`--config-dir DIR` adds a directory of the user's configs)
VALUE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
USAGE = f"usage: twotower {{{'|'.join(STAGE_WORDS)}}} [key=value ...] [-m] [--cfg job]"


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    import torch

    from twotower_cli.stages import STAGES

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        mark_stage_start()
        STAGES[cfg.stage](cfg)
    except (TwoTowerError, ValueError, FileNotFoundError) as err:
        prune_empty(HydraConfig.get().runtime.output_dir, cfg.paths.out)
        print(f"twotower {cfg.stage}: error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    stage = argv.pop(0)
    if stage not in STAGE_WORDS:
        print(f"twotower: unknown stage {stage!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    # argparse takes overrides as one positional run: flags go first, the stage word next
    flags, rest = [], []
    while argv:
        arg = argv.pop(0)
        if arg in ("-m", "--multirun") or arg.split("=")[0] in VALUE_FLAGS:
            flags.append(arg)
            if arg in VALUE_FLAGS and argv:  # `--config-dir DIR`: the value travels along
                flags.append(argv.pop(0))
        else:
            rest.append(arg)
    sys.argv = [sys.argv[0], *flags, f"stage={stage}", *rest]
    app()


if __name__ == "__main__":
    main()
