"""Experiment tracking (`tracking=mlflow`; `tracking=none`, the default, logs nothing).

One MLflow run per `twotower` command (`twotower run` = one run for all six stages; a `-m`
sweep = one run per job), at `tracking.uri` (default `$MLFLOW_TRACKING_URI`: a team's server),
else in MLflow's local store under `paths.out/mlruns` (an SQLite file, MLflow's default backend;
its file store refuses new runs since MLflow 3.7). What a run holds:

- params: the resolved config, flattened (`model.embed_dim`, `train.lr`, ...), once;
- tags: the stage word, and `<stage>.dir` = each stage's output dir as it finishes;
- metrics: `train/loss` and `train/valid_recall_at_K` per epoch (step = epoch, live, through the
  trainer's `on_epoch` hook), each stage's numeric figures as `<stage>/<name>`, its time as
  `seconds/<stage>`, and the test metrics as `test/<ranker>/<metric>` (`test/model/recall_at_20`,
  `test/popularity/...`); MLflow keys cannot hold `@`, so `recall@20` becomes `recall_at_20`;
- artifacts: each stage's manifest and small JSON/HTML/PNG outputs under `<stage>/`.

The CLI opens a session around the stage (`session`); the stage outputs (artifacts.StageOutput)
and the trainer report to `active()`. The library never imports mlflow unless it is chosen.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from twotower_cli.core.layout import FILES

# artifacts larger than this stay where they are (their dir is a tag); models are not copied
MAX_ARTIFACT_BYTES = 5 << 20
ARTIFACT_SUFFIXES = (".json", ".html", ".png", ".md")
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value


def metric_key(key: str) -> str:
    """A metric name MLflow accepts: `recall@20` -> `recall_at_20`."""
    return key.replace("@", "_at_")


def flatten(config: dict) -> dict[str, str]:
    """{'train': {'lr': 0.003}} -> {'train.lr': '0.003'}; lists stay whole, as text."""
    if not config:
        return {}
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in flat.items()}


def numeric_items(values: dict, prefix: str) -> dict[str, float]:
    """The finite numbers in a (nested) dict as metrics named `prefix/key/...`."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{metric_key(str(key))}"
        if isinstance(value, dict):
            out.update(numeric_items(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[name] = float(value)
    return out


class NullTracker:
    """`tracking=none`: every call is a no-op."""

    def start(self, config: dict, tags: dict[str, str]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def log_epoch(self, record: dict) -> None:
        pass

    def log_stage(self, out_dir: Path, manifest: dict) -> None:
        pass

    def log_finished(self, out_dir: str | Path) -> None:
        """A stage that ran in other processes (`train.nproc` workers, which track nothing):
        its epochs and manifest, read back from its dir."""
        out_dir = Path(out_dir)
        if (out_dir / FILES.history).exists():
            for record in json.loads((out_dir / FILES.history).read_text()):
                self.log_epoch(record)
        self.log_stage(out_dir, json.loads((out_dir / FILES.manifest).read_text()))


class MlflowTracker(NullTracker):
    """`tracking=mlflow`: one MLflow run per command, at the tracking URI `uri` (a server or any
    MLflow store) or, without one, in a local SQLite store under `store_dir`."""

    def __init__(
        self, store_dir: str, experiment: str = "twotower", run_name: str = "",
        uri: str | None = None,
    ) -> None:  # fmt: skip
        self.store_dir = Path(store_dir).resolve()
        self.experiment = experiment
        self.run_name = run_name or None
        self.given_uri = uri or None
        self.run_id: str | None = None

    @property
    def uri(self) -> str:
        return self.given_uri or f"sqlite:///{self.store_dir / FILES.mlflow_db}"

    def start(self, config: dict, tags: dict[str, str]) -> None:
        import mlflow

        artifacts = None  # a given URI: the server's own artifact location
        if self.given_uri is None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            artifacts = (self.store_dir / "artifacts").as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.experiment, artifact_location=artifacts
        )  # fmt: skip
        run = self.client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [mlflow.entities.Param(k, v) for k, v in flatten(config).items()]
        for s in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[s : s + 100])

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None

    def _metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for s in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[s : s + 1000])

    def log_epoch(self, record: dict) -> None:
        if self.run_id is None:
            return
        epoch = int(record["epoch"])
        values = {k: v for k, v in record.items() if k != "epoch"}
        self._metrics(numeric_items(values, "train"), step=epoch)

    def log_stage(self, out_dir: Path, manifest: dict) -> None:
        if self.run_id is None:
            return
        stage, out_dir = manifest["stage"], Path(out_dir).resolve()
        figures, metrics = manifest.get("figures", {}), {}
        if stage == "evaluate":  # its figures repeat metrics.json's model part: logged as test/
            figures = {k: v for k, v in figures.items() if not k.startswith("model/")}
            if (out_dir / FILES.metrics).exists():
                metrics = numeric_items(json.loads((out_dir / FILES.metrics).read_text()), "test")
        metrics.update(numeric_items(figures, stage))
        metrics[f"seconds/{stage}"] = float(manifest["seconds"])
        self._metrics(metrics)
        self.client.set_tag(self.run_id, f"{stage}.dir", str(out_dir))
        for path in sorted(out_dir.iterdir()):
            small = path.is_file() and path.stat().st_size <= MAX_ARTIFACT_BYTES
            if small and path.suffix in ARTIFACT_SUFFIXES:
                self.client.log_artifact(self.run_id, str(path), artifact_path=stage)


_active: NullTracker = NullTracker()


def active() -> NullTracker:
    """The tracker of the command being run (a NullTracker outside a session)."""
    return _active


@contextlib.contextmanager
def session(tracker: NullTracker, config: dict, tags: dict[str, str]) -> Iterator[NullTracker]:
    """Make `tracker` the active one for a command; its run ends FINISHED, or FAILED when the
    command raises (also on Ctrl-C: KILLED)."""
    global _active
    tracker.start(config, tags)
    _active, status = tracker, "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _active = NullTracker()
        tracker.finish(status)
