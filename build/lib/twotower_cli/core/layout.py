"""Where a run's artifacts live: one `Layout` derives every stage's directory and file paths
from `cfg.paths` (conf/paths/default.yaml), so stages, serve, export, loadtest, compare and
the benchmark never spell a file name themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_DIRS = ("preprocess", "sample", "train", "embed", "index", "evaluate", "export")


@dataclass(frozen=True)
class Layout:
    out: Path
    preprocess: Path
    sample: Path
    train: Path
    embed: Path
    index: Path
    evaluate: Path
    export: Path
    run: str

    @classmethod
    def of(cls, paths) -> Layout:
        """From the resolved `paths` config node (or a dict with the same keys)."""
        dirs = {s: Path(paths[f"{s}_dir"]) for s in STAGE_DIRS}
        return cls(out=Path(paths["out"]), run=str(paths["run"]), **dirs)

    @classmethod
    def of_run(cls, run_dir: str | Path, out: str | Path = "outputs") -> Layout:
        """The layout of a finished run from its directory `<sample_dir>/<run>` (what
        compare and the report are given): the stage dirs sit under it and two levels up."""
        run_dir = Path(run_dir)
        sample = run_dir.parent
        data = sample.parent.parent
        return cls(out=Path(out), preprocess=data / "preprocess", sample=sample,
                   train=run_dir / "train", embed=run_dir / "embed", index=run_dir / "index",
                   evaluate=run_dir / "evaluate", export=run_dir / "export",
                   run=run_dir.name)  # fmt: skip

    # preprocess
    def split(self, name: str) -> Path:
        """`train`, `valid`, `test`, `tasks_train`, ... as written by preprocess."""
        return self.preprocess / f"{name}.parquet"

    @property
    def users(self) -> Path:
        return self.preprocess / "users.parquet"

    @property
    def items(self) -> Path:
        return self.preprocess / "items.parquet"

    @property
    def vocabs(self) -> Path:
        return self.preprocess / "vocabs.json"

    @property
    def schema(self) -> Path:
        return self.preprocess / "schema.json"

    @property
    def candidates(self) -> Path:
        return self.preprocess / "candidates.npy"

    @property
    def item_log_prior(self) -> Path:
        """The freshness prior of temporal pools (pools.with_item_prior), if preprocess made
        one."""
        return self.preprocess / "item_log_prior.npy"

    @property
    def exposures(self) -> Path:
        return self.preprocess / "exposures.parquet"

    # sample
    @property
    def examples(self) -> Path:
        return self.sample / "examples.parquet"

    @property
    def negatives(self) -> Path:
        return self.sample / "negatives.npy"

    @property
    def item_log_q(self) -> Path:
        return self.sample / "item_log_q.npy"

    # train
    @property
    def model(self) -> Path:
        return self.train / "model.pt"

    @property
    def history(self) -> Path:
        return self.train / "history.json"

    # embed
    def vectors(self, side: str) -> Path:
        return self.embed / f"{side}_vectors.npy"

    def ids(self, side: str) -> Path:
        return self.embed / f"{side}_ids.npy"

    # index, evaluate
    @property
    def faiss_index(self) -> Path:
        return self.index / "items.faiss"

    @property
    def metrics(self) -> Path:
        return self.evaluate / "metrics.json"
