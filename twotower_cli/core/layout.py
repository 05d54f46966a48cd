"""Where a run's artifacts live, and what every file is called: `FILES` holds each artifact's
file name (the one place any module spells one; tests/unit/test_layout.py holds that), and
`Layout` derives every stage's directory and file paths from `cfg.paths`
(conf/paths/default.yaml) or from a finished run's directory, so stages, serve, export,
loadtest, compare, report and the benchmark ask it instead of spelling a path themselves.

The run tree (what conf/paths/default.yaml builds and `Layout.of_run` reads back):

    <out>/<dataset>/preprocess/                      splits, tables, vocabs.json, schema.json
    <out>/<dataset>/sample/<sampler>/                examples.parquet, negatives.npy
    <out>/<dataset>/sample/<sampler>/<run>/<stage>/  train, embed, index, evaluate, export
    <out>/<dataset>/tune/<name>/                     the study, trials.csv, best.yaml
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field, replace
from pathlib import Path

STAGE_DIRS = ("preprocess", "sample", "train", "embed", "index", "evaluate", "export")
RUN_STAGES = ("train", "embed", "index", "evaluate", "export")  # the dirs under a run dir


@dataclass(frozen=True)
class ArtifactNames:
    """Every file name the package writes or reads by name, by the command that writes it."""

    # every stage dir (artifacts/store.py, artifacts/swap.py)
    manifest: str = "manifest.json"
    publish_journal: str = ".publish.json"
    # preprocess (data/preprocess.py, data/tables.py); the splits: `table(name)`
    users: str = "users.parquet"
    items: str = "items.parquet"
    vocabs: str = "vocabs.json"
    schema: str = "schema.json"
    exposures: str = "exposures.parquet"
    # sample
    examples: str = "examples.parquet"
    negatives: str = "negatives.npy"
    item_log_q: str = "item_log_q.npy"
    # train; a model's own artifacts (field weights, tasks): `model_artifact(name)`
    model: str = "model.pt"
    history: str = "history.json"
    resume_dir: str = ".resume"  # train's per-epoch state, beside its outputs
    resume_state: str = "state.pt"  # in resume_dir (training/resume.py)
    # preprocess's DuckDB spill dir, under paths.out (data/engine.py)
    engine_spill: str = ".engine"
    # index, evaluate
    faiss_index: str = "items.faiss"
    metrics: str = "metrics.json"  # evaluate's, and tune's
    # export's bundle (export/bundle.py)
    user_tower: str = "user_tower.onnx"
    bundle_item_ids: str = "item_ids.json"
    serving: str = "serving.json"
    # report (report/page.py); its plots: `plot(name)`
    report_page: str = "index.html"
    diagnostics: str = "diagnostics.json"
    # tune (pipeline/tune.py, pipeline/study.py)
    trials: str = "trials.csv"
    best: str = "best.yaml"
    study_journal: str = "study.journal"
    # tracking (artifacts/tracking.py): MLflow's own store under tracking.dir
    mlflow_db: str = "mlflow.db"
    # tools/loadtest.py's results, under paths.out
    loadtest: str = "loadtest.json"
    # `make bench`'s results, its ANN rows and its page, in bench's --out (bench/run.py,
    # bench/report.py)
    bench_results: str = "bench.json"
    bench_ann: str = "ann.json"
    bench_page: str = "bench.md"
    # raw inputs read by name: the news download (data/news.py, tools/news_sim.py) and the
    # synthetic generator's cache (data/synthetic.py)
    news_users: str = "user_info_data_5w.csv"
    news_docs: str = "doc_info.txt"
    news_log: str = "train_data_5w.csv"
    news_truth: str = "hidden_truth.npz"
    synthetic_params: str = "params.json"

    def table(self, name: str) -> str:
        """A parquet table by name: preprocess's `train`, `valid`, `test`, `tasks_train`, ...;
        the synthetic cache's `interactions`, `users`, `items`."""
        return f"{name}.parquet"

    def array(self, name: str) -> str:
        """An array preprocess saves by name (`candidates`, `item_log_prior`,
        `valid_candidates`, `valid_item_log_prior`)."""
        return f"{name}.npy"

    def model_artifact(self, name: str) -> str:
        """A model's own JSON beside model.pt (`field_weights`, `tasks`: TwoTower.artifacts)."""
        return f"{name}.json"

    def vectors(self, side: str) -> str:
        return f"{side}_vectors.npy"

    def ids(self, side: str) -> str:
        return f"{side}_ids.npy"

    def plot(self, name: str) -> str:
        return f"{name}.png"

    def profile(self, rank: int) -> str:
        """train.profile's per-rank record (training/hooks.py)."""
        return f"rank{rank}.json"

    def compare_tables(self, name: str) -> tuple[str, str]:
        """tools/compare.py's Markdown table and its JSON rows."""
        return f"{name}.md", f"{name}.json"


FILES = ArtifactNames()


def run_root(out: str | Path, dataset: str, sample: str, run: str) -> Path:
    """`<out>/<dataset>/sample/<sample>/<run>`: conf/paths/default.yaml's run_root."""
    return Path(out) / dataset / "sample" / sample / run


# a value conf/paths/default.yaml derives from the group choices (omegaconf's MISSING)
DERIVED = "???"


@dataclass
class PathsSettings:
    """The schema of `paths` (conf/paths/default.yaml, pipeline/config.py registers it): every
    key a string, and no other key (`+paths.foo=1` is refused). Only `out` has a value of its
    own; the rest derive from it and the group choices there."""

    out: str = "outputs"
    data_dir: str = DERIVED
    preprocess_dir: str = DERIVED
    sample_dir: str = DERIVED
    run: str = DERIVED
    run_root: str = DERIVED
    train_dir: str = DERIVED
    embed_dir: str = DERIVED
    index_dir: str = DERIVED
    evaluate_dir: str = DERIVED
    export_dir: str = DERIVED
    report_dir: str = DERIVED
    run_dir: str = DERIVED
    tune_dir: str = DERIVED
    # stage word -> the dir it writes (Hydra's run dir)
    stage_dirs: dict[str, str] = field(default_factory=dict)


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
    root: Path  # the run dir: <sample>/<run>, above train ... export

    @classmethod
    def of(cls, paths) -> Layout:
        """From the resolved `paths` config node (or a dict with the same keys)."""
        dirs = {s: Path(paths[f"{s}_dir"]) for s in STAGE_DIRS}
        return cls(out=Path(paths["out"]), run=str(paths["run"]), root=Path(paths["run_root"]),
                   **dirs)  # fmt: skip

    @classmethod
    def of_run(cls, run_dir: str | Path, out: str | Path = "outputs") -> Layout:
        """The layout of a finished run from its directory `<sample_dir>/<run>` (what
        compare and the report are given): the stage dirs sit under it and two levels up."""
        run_dir = Path(run_dir)
        sample = run_dir.parent
        data = sample.parent.parent
        runs = {s: run_dir / s for s in RUN_STAGES}
        return cls(out=Path(out), preprocess=data / "preprocess", sample=sample,
                   run=run_dir.name, root=run_dir, **runs)  # fmt: skip

    @classmethod
    def named(cls, out: str | Path, dataset: str, sample: str, run: str) -> Layout:
        """The layout of run `run` of data set dir `dataset` and sample dir `sample` (the
        sampler's name) under `out`, as the paths config places it."""
        return cls.of_run(run_root(out, dataset, sample, run), out)

    @staticmethod
    def find_runs(out: str | Path, run: str) -> list[Path]:
        """The run dirs named `run` under `out`, of any data set and sampler (glob's `*`
        passes over hidden dirs, pathlib's would not)."""
        return [Path(p) for p in sorted(glob.glob(str(run_root(out, "*", "*", run))))]

    def with_inputs(self, preprocess: Path, sample: Path) -> Layout:
        """This run read from these preprocess and sample dirs (the ones its train manifest
        names: report/diagnostics.run_layout)."""
        return replace(self, preprocess=Path(preprocess), sample=Path(sample))

    def stage(self, name: str) -> Path:
        """A stage's dir by its name (STAGE_DIRS)."""
        return getattr(self, name)

    @property
    def dataset(self) -> str:
        """The data set's name: the path part above `sample/<sampler>/<run>`."""
        return self.root.parents[2].name

    @property
    def label(self) -> str:
        """`<sampler>/<run>`, the two path parts that tell runs of one data set apart."""
        return f"{self.root.parent.name}/{self.root.name}"

    # preprocess
    def split(self, name: str) -> Path:
        """`train`, `valid`, `test`, `tasks_train`, ... as written by preprocess."""
        return self.preprocess / FILES.table(name)

    @property
    def users(self) -> Path:
        return self.preprocess / FILES.users

    @property
    def items(self) -> Path:
        return self.preprocess / FILES.items

    @property
    def vocabs(self) -> Path:
        return self.preprocess / FILES.vocabs

    @property
    def schema(self) -> Path:
        return self.preprocess / FILES.schema

    @property
    def candidates(self) -> Path:
        return self.preprocess / FILES.array("candidates")

    @property
    def item_log_prior(self) -> Path:
        """The freshness prior of temporal pools (pools.with_item_prior), if preprocess made
        one."""
        return self.preprocess / FILES.array("item_log_prior")

    @property
    def exposures(self) -> Path:
        return self.preprocess / FILES.exposures

    # sample
    @property
    def examples(self) -> Path:
        return self.sample / FILES.examples

    @property
    def negatives(self) -> Path:
        return self.sample / FILES.negatives

    @property
    def item_log_q(self) -> Path:
        return self.sample / FILES.item_log_q

    # train
    @property
    def model(self) -> Path:
        return self.train / FILES.model

    @property
    def history(self) -> Path:
        return self.train / FILES.history

    def model_artifact(self, name: str) -> Path:
        return self.train / FILES.model_artifact(name)

    @property
    def resume(self) -> Path:
        return self.train / FILES.resume_dir

    @property
    def engine_spill(self) -> Path:
        return self.out / FILES.engine_spill

    # embed
    def vectors(self, side: str) -> Path:
        return self.embed / FILES.vectors(side)

    def ids(self, side: str) -> Path:
        return self.embed / FILES.ids(side)

    # index, evaluate
    @property
    def faiss_index(self) -> Path:
        return self.index / FILES.faiss_index

    @property
    def metrics(self) -> Path:
        return self.evaluate / FILES.metrics
