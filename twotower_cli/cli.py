"""The front door: `twotower <stage> [hydra overrides]`. It only routes: the stage word becomes
the `stage=` override and Hydra does the rest (overrides, -m sweeps, --cfg job). A config that
does not compose, or a value out of bounds, is one line naming the key (config.py)."""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path


def _interrupted_at_start() -> None:
    """Ctrl-C while the script imports the pipeline (about half a second, before `main`):
    one line and exit 130, as later; imported from Python (the API), KeyboardInterrupt as usual."""
    script = Path(sys.argv[0] if sys.argv else "")
    if script.name.startswith("twotower") or script.parent.name == "twotower_cli":
        word = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].isalpha() else ""
        print(f"twotower{' ' + word if word else ''}: interrupted", file=sys.stderr)
        sys.exit(130)


try:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    from twotower_cli.artifacts.store import prune_empty
    from twotower_cli.artifacts.tracking import NullTracker, session
    from twotower_cli.core.errors import TwoTowerError
    from twotower_cli.core.launcher import check_stage
    from twotower_cli.pipeline import config
except KeyboardInterrupt:
    _interrupted_at_start()
    raise

# absolute: a relative config_path becomes a package path once installed as a script
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
# `twotower --help`: the stages and the groups a user picks from, one line each
STAGES = {
    "preprocess": "load and clean the raw data, split it, encode the features",
    "sample": "build the training examples the sampler needs",
    "train": "train the two towers (early stopping on validation recall)",
    "embed": "item vectors for the catalogue, user vectors for evaluation",
    "index": "a faiss index over the item vectors (index.factory)",
    "evaluate": "Recall/NDCG/... on test, beside the popularity and EASE baselines",
    "run": "preprocess .. evaluate in order, skipping stages whose outputs are current",
    "serve": "HTTP service: top-K items for a user or a history (docs/serving.md)",
    "export": "a serving bundle: ONNX user tower, faiss index, vocabularies",
    "report": "one HTML page of a finished run (--compare RUN_DIR ... side by side)",
    "tune": "an Optuna search on validation; the best refitted and evaluated",
}
STAGE_WORDS = tuple(STAGES)
GROUPS = {
    "dataset": "the data set (your own: dataset=csv or a YAML in --config-dir)",
    "sampler": "which negatives a batch holds",
    "model": "the tower variant",
    "experiment": "an overlay of a measured configuration",
    "tracking": "none, or mlflow (tracking.uri; default $MLFLOW_TRACKING_URI, else local)",
    "hparams_search": "twotower tune's search space",
    "train": "epochs, batch_size, lr, device (cpu|cuda|auto), patience, nproc, ...",
    "index": "faiss factory string, nprobe, ef_search",
    "eval": "cut-offs ks, baselines, max_users",
    "serve": "host, port, limits, api_key",
    "paths": "out (where every artifact goes), run (the training run's name)",
}
# faiss announces which SIMD build it loaded at INFO; not news to a user
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
# Hydra's flags that take a value (`--config-dir DIR` adds a directory of the user's configs)
VALUE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
USAGE = (f"usage: twotower {{{'|'.join(STAGE_WORDS)}}} [key=value ...] [-m] [--cfg job] "
         "[--force]\n"
         "       twotower report --compare RUN_DIR RUN_DIR ... [key=value ...]")  # fmt: skip
config.register()


def run_stage(cfg: DictConfig) -> dict:
    """Check a composed config and run its stage (cfg.stage), tracked; returns the stage's
    figures (evaluate's and run's: the metrics). Raises TwoTowerError; the Python API's door."""
    config.check(cfg)
    check_stage(cfg.stage)
    if cfg.stage in ("preprocess", "sample"):  # data and samplers: torch and faiss unloaded
        from twotower_cli.pipeline.prep import preprocess, sample

        stage_fns = {"preprocess": preprocess, "sample": sample}
    else:
        from twotower_cli.pipeline.stages import STAGES as stage_fns
        from twotower_cli.training import distributed

        distributed.set_threads(cfg.threads)  # null: every core, shared by torchrun's local ranks
    # serve runs until stopped, and under torchrun rank 0 alone tracks: nothing to track
    quiet = cfg.stage == "serve" or os.environ.get("RANK", "0") != "0"
    tracker = NullTracker() if quiet else instantiate(cfg.tracking)
    choices = HydraConfig.get().runtime.choices
    tags = {"stage": cfg.stage, "run": str(cfg.paths.run),
            **{g: str(choices.get(g)) for g in ("dataset", "sampler", "model")}}  # fmt: skip
    with session(tracker, OmegaConf.to_container(cfg, resolve=True), tags):
        return _stage(cfg.stage, stage_fns)(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    try:
        run_stage(cfg)
    except TwoTowerError as err:
        _fail(cfg, f"error: {err}", 2)
    except KeyboardInterrupt:  # Ctrl-C: every stage dir is left as it was (artifacts/swap.py)
        _fail(cfg, "interrupted; what it was writing is not published", 130)
    except OSError as err:  # disk full, a read-only or unwritable paths.out
        where = f"{err.filename}: " if err.filename else ""
        _fail(cfg, f"error: {where}{err.strerror or err}", 2)


def _fail(cfg: DictConfig, line: str, code: int) -> None:
    try:
        prune_empty(HydraConfig.get().runtime.output_dir, cfg.paths.out)
    except OSError:
        pass  # an unwritable paths.out: nothing of ours to prune
    print(f"twotower {cfg.stage}: {line}", file=sys.stderr)
    sys.exit(code)


def _stage(word: str, stages: dict):
    """The stage function; `tune` drives the other stages, so it is routed here, beside them
    (and optuna is imported only when it runs)."""
    if word == "tune":
        from twotower_cli.pipeline.tune import run_tune

        return run_tune
    return stages[word]


def _composes(stage: str, flags: list[str], overrides: list[str],
              swept: set[str] | None) -> str | None:  # fmt: skip
    """Compose the config once before Hydra runs, so that a type error or an unknown key is one
    line naming it, not Hydra's report, and an unwritable paths.out is named. Under -m (`swept`:
    the keys it sweeps) a sweep's `a=1,2` is not a value: the other overrides are composed for
    paths.out, and Hydra reports the rest. Returns paths.out (None when it is swept or reads
    Hydra's runtime)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(f.split("=")[0] in VALUE_FLAGS[2:] for f in flags):
        return None  # another primary config: Hydra's own report
    multirun = swept is not None
    if multirun:
        overrides = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in swept]
    dirs = []
    for i, f in enumerate(flags):
        name, _, value = f.partition("=")
        if name in ("--config-dir", "-cd"):
            dirs.append(value or (flags[i + 1] if i + 1 < len(flags) else "."))
    paths = ",".join(f"file://{Path(d).resolve()}" for d in dirs)
    searchpath = [f"hydra.searchpath=[{paths}]"] if dirs else []
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*searchpath, *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        if multirun:
            return None
        print(f"twotower {stage}: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    if multirun and "paths.out" in swept:
        return None
    try:
        out = str(OmegaConf.select(cfg, "paths.out"))
    except OmegaConfBaseException:
        return None  # paths.out reads Hydra's runtime: Hydra itself finds out
    _writable(stage, out)
    return out


def _writable(stage: str, out: str) -> None:
    """paths.out must be (or be creatable in) a writable directory: Hydra makes the stage's
    run dir under it before any stage code runs, with a traceback if it cannot."""
    where = Path(out).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        print(f"twotower {stage}: error: paths.out={out}: {where} is not a writable directory",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)


def _one_line(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: the message and the key."""
    cause = err.__cause__ or err
    missing = getattr(cause, "missing_cfg_file", None)  # hydra's MissingConfigException
    if missing and "/" in missing and getattr(cause, "options", None):
        group, name = missing.rsplit("/", 1)
        known = ", ".join(o for o in cause.options if not o.startswith("_"))
        return (
            f"{group}={name}: no such option; known: {known}; a YAML of "
            f"your own goes in --config-dir DIR as DIR/{group}/{name}.yaml"
        )
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    detail = ("full_key:", "object_type", "reference_type")
    message = next((ln for ln in lines if not ln.startswith(detail)), str(cause))
    return f"{key}: {message}" if key and not message.startswith(key) else message


def compare_override(argv: list[str]) -> list[str]:
    """`--compare A B` -> `report.compare=['A','B']`: the run dirs after the flag, up to the
    next override (`key=value`) or flag."""
    at = argv.index("--compare")
    end = at + 1
    while end < len(argv) and "=" not in argv[end] and not argv[end].startswith("-"):
        end += 1
    runs = argv[at + 1 : end]
    if not runs:
        print(f"twotower report: --compare needs run dirs; {USAGE}", file=sys.stderr)
        sys.exit(2)
    quoted = ",".join("'" + r.replace("\\", "\\\\").replace("'", "\\'") + "'" for r in runs)
    return [*argv[:at], f"report.compare=[{quoted}]", *argv[end:]]


def group_options(group: str) -> list[str]:
    """A config group's options (`_name.yaml` files are shared bases, not options)."""
    files = (Path(CONFIG_DIR) / group).glob("*.yaml")
    return sorted(p.stem for p in files if not p.stem.startswith("_"))


def help_text(stage: str | None = None) -> str:
    """`twotower --help` (stages and groups) or `twotower STAGE --help` (that stage's line and
    the groups); Hydra's own listing, internal groups included, is `--hydra-help`."""
    lines = [USAGE, ""]
    if stage is None:
        lines += ["stages:", *(f"  {w:<11} {line}" for w, line in STAGES.items()), ""]
    else:
        lines += [f"twotower {stage}: {STAGES[stage]}", ""]
    lines.append("groups (pick with group=option; any key with key=value):")
    for group, line in GROUPS.items():
        lines.append(f"  {group:<15} {'|'.join(group_options(group))}: {line}")
    lines += [
        "",
        "`twotower STAGE --cfg job` prints the composed config; --config-dir DIR adds "
        "your own YAML files; `twotower --version`. README.md and docs/ say more.",
    ]
    return "\n".join(lines)


def _front_flags(argv: list[str]) -> None:
    """--version and --help, before any config is read (exit 0); no stage: usage, exit 2."""
    if argv and argv[0] == "--version":
        from twotower_cli import __version__

        print(f"twotower {__version__}")
        sys.exit(0)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text() if argv else USAGE, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] in STAGE_WORDS and any(a in ("-h", "--help") for a in argv[1:]):
        print(help_text(argv[0]))
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    word = argv[0] if argv and argv[0] in STAGE_WORDS else ""
    try:
        _route(argv)
    except KeyboardInterrupt:  # before a stage started (composing, Hydra's set-up); then app's
        print(f"twotower{' ' + word if word else ''}: interrupted", file=sys.stderr)
        sys.exit(130)


def _route(argv: list[str]) -> None:
    _front_flags(argv)
    stage = argv.pop(0)
    if stage not in STAGE_WORDS:
        print(f"twotower: unknown stage {stage!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    if stage == "report" and "--compare" in argv:
        argv = compare_override(argv)
    # argparse takes overrides as one positional run: flags go first, the stage word next
    flags, rest = [], []
    while argv:
        arg = argv.pop(0)
        if arg == "--force":
            rest.append("run.force=true")
        elif arg in ("-m", "--multirun") or arg.split("=")[0] in VALUE_FLAGS:
            flags.append(arg)
            if arg in VALUE_FLAGS and argv:  # `--config-dir DIR`: the value travels along
                flags.append(argv.pop(0))
        else:
            rest.append(arg)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    swept, fixed = config.sweeps(rest) if multirun else (None, set())
    out = None
    if not any(a.startswith("--") for a in rest):
        out = _composes(stage, flags, [f"stage={stage}", *rest], swept)
    # a job of a sweep is named by its swept keys (config.run_name): the fixed ones are left out
    naming = [config.name_by_sweep({"stage", *fixed})] if multirun else []
    sys.argv = [sys.argv[0], *flags, *naming, f"stage={stage}", *rest]
    with _hydra_writes(stage, out):
        app()


@contextmanager
def _hydra_writes(stage: str, out: str | None):
    """Hydra makes the stage's run dir (under -m also writes <sweep dir>/multirun.yaml, with
    hydra.output_subdir set .hydra/*.yaml) before any stage code runs, and reports a failure
    there with a traceback of its own (hydra._internal.utils.run_and_report). An OSError there
    (a full disk, an unwritable paths.out) becomes one line; the file it was writing and the
    dirs left empty under paths.out (`out`) are removed. A stage's own OSErrors are app's."""
    from hydra._internal import utils as hydra_utils

    report = hydra_utils.run_and_report

    def one_line(func):
        def call():
            try:
                return func()
            except OSError as err:
                path = err.filename or _writing(err)
                if path and not err.filename and Path(path).is_file():
                    Path(path).unlink()  # half written
                if path and out is not None:
                    prune_empty(Path(path).parent, out)
                where = f"{path}: " if path else ""
                print(f"twotower {stage}: error: {where}{err.strerror or err}", file=sys.stderr)
                sys.exit(2)

        return report(call)

    hydra_utils.run_and_report = one_line
    try:
        yield
    finally:
        hydra_utils.run_and_report = report


def _writing(err: OSError) -> str | None:
    """The file an OSError interrupted writing: a failed write or close names no file, but the
    frame that raised it holds the open file (Hydra's and OmegaConf's `with open(...) as f`)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    for value in tb.tb_frame.f_locals.values() if tb is not None else ():
        if isinstance(value, io.IOBase) and "w" in getattr(value, "mode", ""):
            return str(value.name)
    return None


if __name__ == "__main__":
    main()
