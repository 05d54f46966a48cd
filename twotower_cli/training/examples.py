"""Per-example extras that `twotower train` attaches to the sampler's examples, and per-user
histories for `train` (validation) and `embed` (evaluation). Everything is vectorised.

- task labels: a 0/1 column `task.<name>` per task, looked up by (user, item) in the
  `tasks_train` rows of `twotower preprocess`; rows positive only for a task, not for the label,
  are appended as extra positives (MovieLens: watched but not liked films for the `watch` task).
- user history: `user.history`, right-aligned and 0-padded, never the example's own row (a log
  that repeats a (user, item) pair keeps the pair's other rows; the k-th example of a pair is
  its k-th row); the timeline is the label's training positives, ordered like the split,
  (timestamp, item) per user. `history_mode`: `causal`, the user's most recent `history_len`
  positives before the example; `leave_one_out`, the user's most recent `history_len`
  positives other than the example itself, i.e. what serving reads, less the target.
  An example stores only where its window ends on the timeline and the row it leaves out
  (`history.end`, `history.skip`: two ids, not history_len); `HistoryBatch` reads each batch's
  windows off the timeline, so memory grows with the rows, not rows x history_len (20 GB at
  100M rows and 50 items).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower_cli.artifacts.store import read_columns, read_splits
from twotower_cli.core.errors import ConfigError, TwoTowerError
from twotower_cli.core.keys import find, pair_keys
from twotower_cli.core.layout import FILES
from twotower_cli.core.settings import HISTORY, HISTORY_MODES
from twotower_cli.data.split import user_time_order

TASK_PREFIX = "task."
HISTORY_KEY = f"user.{HISTORY}"
# an example's history window on the timeline (HistoryBatch reads the ids at train time)
WINDOW_END, WINDOW_SKIP = "history.end", "history.skip"


def attach_tasks(examples: pd.DataFrame, task_rows: pd.DataFrame, tasks: list[str],
                 n_items: int) -> pd.DataFrame:  # fmt: skip
    """examples (user, item, label) -> the same rows plus `task.<t>` labels and `timestamp`
    (NaN for the sampler's negatives), then the task rows that are not yet among the
    examples' positives, as extra positives."""
    rows = task_rows.drop_duplicates(["user", "item"])
    keys = pair_keys(rows["user"].to_numpy(), rows["item"].to_numpy(), n_items)
    order = np.argsort(keys)
    keys = keys[order]
    ex_keys = pair_keys(examples["user"].to_numpy(), examples["item"].to_numpy(), n_items)
    at, found = find(keys, ex_keys)
    found &= examples["label"].to_numpy() > 0
    src = order[at]
    out = examples.copy()
    out["timestamp"] = np.where(found, rows["timestamp"].to_numpy()[src], np.nan)
    for t in tasks:
        out[TASK_PREFIX + t] = np.where(found, rows[t].to_numpy()[src] > 0, False).astype(
            np.float32
        )
    covered = np.zeros(len(rows), dtype=bool)
    covered[src[found]] = True
    extra = rows[~covered]
    extra = pd.DataFrame(
        {
            "user": extra["user"].to_numpy(),
            "item": extra["item"].to_numpy(),
            "label": np.float32(1.0),
            "timestamp": extra["timestamp"].to_numpy().astype(np.float64),
            **{TASK_PREFIX + t: (extra[t].to_numpy() > 0).astype(np.float32) for t in tasks},
        }
    )
    return pd.concat([out, extra], ignore_index=True)


class Timeline:
    """Positives sorted by (user, timestamp, item); `start[u]:start[u + 1]` are user u's rows."""

    def __init__(self, positives: pd.DataFrame, n_users: int) -> None:
        frame = positives.take(user_time_order(positives))
        self.users = frame["user"].to_numpy(np.int64)
        self.items = frame["item"].to_numpy(np.int64)
        self.times = frame["timestamp"].to_numpy(np.int64)
        counts = np.bincount(self.users, minlength=n_users + 1)
        self.start = np.concatenate([[0], np.cumsum(counts)])

    def history(self, users: np.ndarray, positions: np.ndarray, length: int) -> np.ndarray:
        """[n, length] item ids: user u's rows just before global row `positions` (exclusive),
        most recent last, left-padded with 0."""
        idx = positions[:, None] - length + np.arange(length)[None, :]
        valid = idx >= self.start[users][:, None]
        padded = np.concatenate([self.items, [0]])  # an empty timeline still indexes safely
        return np.where(valid, padded[idx.clip(min=0, max=len(padded) - 1)], 0).astype(np.int64)

    def per_user(self, n_users: int, length: int) -> np.ndarray:
        """[n_users + 1, length]: each user's last `length` items (row 0 = padding)."""
        users = np.arange(n_users + 1)
        return self.history(users, self.start[1:], length)

    def example_positions(self, examples: pd.DataFrame, n_items: int,
                          rng: np.random.Generator) -> np.ndarray:  # fmt: skip
        """Global timeline row each example's history ends before: a positive on the timeline
        -> its own row; a row with a timestamp -> the first of the user's rows at or after it;
        a sampled negative -> a uniformly random point of its user's timeline."""
        users = examples["user"].to_numpy(np.int64)
        lo, hi = self.start[users], self.start[users + 1]
        pos = lo + np.floor(rng.random(len(users)) * (hi - lo + 1)).astype(np.int64)
        pos = np.minimum(pos, hi)
        if "timestamp" in examples:
            ts = examples["timestamp"].to_numpy(np.float64)
            has = ~np.isnan(ts)
            # (user, time rank) keys: dense time ranks fit in 32 bits whatever the time unit
            _, ranks = np.unique(np.concatenate([self.times, ts[has].astype(np.int64)]),
                                 return_inverse=True)  # fmt: skip
            tl = self.users * (1 << 32) + ranks[: len(self.times)]
            q = users[has] * (1 << 32) + ranks[len(self.times) :]
            pos[has] = np.searchsorted(tl, q, side="left")
        own = self.own_rows(examples, n_items)
        return np.where(own >= 0, own, pos)

    def own_rows(self, examples: pd.DataFrame, n_items: int) -> np.ndarray:
        """Global timeline row of each positive example's own (user, item); -1 for a row that
        is not on the timeline (a sampled negative, a task-only positive)."""
        users = examples["user"].to_numpy(np.int64)
        keys = pair_keys(self.users, self.items, n_items)
        order = np.argsort(keys, kind="stable")  # within a pair: timeline (time) order
        ex_keys = pair_keys(users, examples["item"].to_numpy(np.int64), n_items)
        rows = np.full(len(users), -1, dtype=np.int64)
        if len(keys):
            first = np.searchsorted(keys[order], ex_keys, side="left")
            stop = np.searchsorted(keys[order], ex_keys, side="right")
            # a log may repeat a (user, item): its k-th example is its k-th timeline row
            at = np.minimum(first + occurrence_rank(ex_keys), stop - 1)
            own = (stop > first) & (examples["label"].to_numpy() > 0)
            rows[own] = order[at[own]]
        return rows


def occurrence_rank(keys: np.ndarray) -> np.ndarray:
    """How many earlier entries of `keys` equal each entry (0 for a first occurrence)."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1]]))
    sizes = np.diff(np.append(starts, len(keys)))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - np.repeat(starts, sizes)
    return rank


def example_windows(examples: pd.DataFrame, timeline: Timeline, n_items: int, seed: int,
                    mode: str = "causal") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each example's history window on the timeline: the global row it ends before and the
    row it leaves out (-1: none). `causal`: the rows before the example (see
    `Timeline.example_positions`); `leave_one_out`: the user's latest rows less its own."""
    if mode not in HISTORY_MODES:
        raise ConfigError(f"train.history_mode: {mode!r} not in {HISTORY_MODES}")
    users = examples["user"].to_numpy(np.int64)
    if mode == "leave_one_out":
        return timeline.start[users + 1], timeline.own_rows(examples, n_items)
    rng = np.random.default_rng(seed)
    positions = timeline.example_positions(examples, n_items, rng)
    return positions, np.full(len(users), -1, dtype=np.int64)


class WrappedStep:
    """The sampler's per-batch step (`inner`: logQ, shared negatives; None: none) applied to
    the rows `expand` makes of a batch; its state (for a resumed run) is the sampler's."""

    def __init__(self, inner=None) -> None:
        self.inner = inner

    def expand(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = self.expand(batch)
        return self.inner(rows) if self.inner is not None else rows

    def state_dict(self) -> dict | None:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else None

    def load_state_dict(self, state) -> None:
        if hasattr(self.inner, "load_state_dict") and state is not None:
            self.inner.load_state_dict(state)


class HistoryBatch(WrappedStep):
    """The sampler's per-batch step after each row's `user.history` is read off the timeline
    from its `history.end` / `history.skip` (one gather of history_len + 1 ids a row)."""

    def __init__(self, timeline: Timeline, length: int, inner=None) -> None:
        super().__init__(inner)
        self.items = torch.from_numpy(np.concatenate([timeline.items, [0]]))  # 0: empty
        self.start = torch.from_numpy(timeline.start)
        self.length = length

    def windows(self, users: torch.Tensor, end: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """[n, length] ids: the `length` rows of each user's timeline before `end`, less row
        `skip` (else less the oldest of length + 1), most recent last, left-padded with 0."""
        if self.items.device != end.device:
            self.items, self.start = self.items.to(end.device), self.start.to(end.device)
        span = torch.arange(self.length + 1, device=end.device)
        idx = end[:, None] - (self.length + 1) + span[None, :]
        ids = self.items[idx.clamp(0, len(self.items) - 1)]
        window = torch.where(idx >= self.start[users][:, None], ids, 0)
        # the left-out row's place in the window; 0 (drop the oldest) when it is not in it
        k = skip - (end - self.length - 1)
        k = torch.where((skip >= 0) & (k >= 0), k, 0)
        j = span[None, : self.length]
        return torch.gather(window, 1, j + (j >= k[:, None]).long())

    def expand(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        end, skip = batch[WINDOW_END].long(), batch[WINDOW_SKIP].long()
        out = {k: t for k, t in batch.items() if k not in (WINDOW_END, WINDOW_SKIP)}
        return {**out, HISTORY_KEY: self.windows(batch["user"].long(), end, skip)}


def training_examples(
    examples: pd.DataFrame,
    train: pd.DataFrame,
    n_users: int,
    n_items: int,
    tasks: tuple[str, ...] = (),
    task_rows: pd.DataFrame | None = None,
    history_len: int = 0,
    seed: int = 0,
    history_mode: str = "causal",
) -> tuple[dict[str, np.ndarray], Timeline | None]:
    """The columns training iterates over: user, item, label, then `task.<t>` per task and,
    when history_len > 0, each example's history window (`history.end`, `history.skip`) with
    the timeline they point into (else None): `HistoryBatch` turns them into `user.history`."""
    if history_mode not in HISTORY_MODES:
        raise ConfigError(f"train.history_mode: {history_mode!r} not in {HISTORY_MODES}")
    if tasks:
        examples = attach_tasks(examples, task_rows, list(tasks), n_items)
    elif history_len:
        examples = examples.copy()
    cols = ["user", "item", "label", *(TASK_PREFIX + t for t in tasks)]
    out = {c: examples[c].to_numpy().copy() for c in cols}
    if history_len:
        if "timestamp" not in examples:
            # a sampler positive's own row is found on the timeline; no timestamp needed
            examples["timestamp"] = np.nan
        timeline = Timeline(train, n_users)
        out[WINDOW_END], out[WINDOW_SKIP] = example_windows(examples, timeline, n_items, seed,
                                                            history_mode)  # fmt: skip
        return out, timeline
    return out, None


def load_training_examples(
    prep_dir: Path, sample_dir: Path, train: pd.DataFrame, n_users: int, n_items: int,
    tasks: tuple[str, ...], history_len: int, seed: int, history_mode: str,
    splits: tuple[str, ...] = ("train",), extra: pd.DataFrame | None = None,
) -> tuple[dict[str, torch.Tensor], Timeline | None]:  # fmt: skip
    """The sampler's examples plus what the model reads per example (task labels, history
    windows) and the explicit negatives ([n_examples, n_neg] `neg`), as tensors for the
    training loop, and the timeline the history windows point into (None without history).
    `train`: the training positives (user, item, timestamp), which the histories read;
    `splits`: the splits they come from (the task rows are read from the same ones); `extra`:
    positives (user, item, label) appended to the sample's examples (a refit's validation
    rows, which have no explicit negatives)."""
    if tasks and not (prep_dir / FILES.table("tasks_train")).exists():
        raise TwoTowerError(f"{prep_dir}: no {FILES.table('tasks_train')}; set dataset.tasks="
                            f"{list(tasks)} and rerun `twotower preprocess`")  # fmt: skip
    path = sample_dir / FILES.examples
    if tasks or history_len:
        task_rows = read_splits(prep_dir, splits, prefix="tasks_") if tasks else None
        frame = pd.read_parquet(path)
        if extra is not None:
            frame = pd.concat([frame, extra[frame.columns]], ignore_index=True)
        cols, timeline = training_examples(frame, train, n_users, n_items, tasks, task_rows,
                                           history_len, seed, history_mode)  # fmt: skip
    else:  # the plain columns, straight from Arrow
        cols, timeline = read_columns(path, ["user", "item", "label"]), None
        if extra is not None:
            cols = {c: np.concatenate([v, extra[c].to_numpy().astype(v.dtype)])
                    for c, v in cols.items()}  # fmt: skip
    if (sample_dir / FILES.negatives).exists():  # [n_examples, n_neg]: example i's negatives
        neg = np.load(sample_dir / FILES.negatives)
        # rows appended for task-only positives borrow the negatives of a sampled example
        extra = np.arange(len(cols["user"]) - len(neg)) % len(neg)
        cols["neg"] = np.concatenate([neg, neg[extra]]) if len(extra) else neg
    # ids stored as int32 while they fit (half the memory); trainer.widen_ids widens each batch
    for c in ("user", "item", WINDOW_END, WINDOW_SKIP):
        if c in cols and len(cols[c]) and cols[c].max() < 2**31:
            cols[c] = cols[c].astype(np.int32)
    return {c: torch.from_numpy(v) for c, v in cols.items()}, timeline


def with_history(users: dict[str, torch.Tensor], seen: pd.DataFrame,
                 history_len: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """The user table plus each user's latest `history_len` items in `seen` (none: as is)."""
    if not history_len:
        return users
    n_users = len(users["user"]) - 1
    hist = Timeline(seen, n_users).per_user(n_users, history_len)
    return {**users, HISTORY: torch.from_numpy(hist)}
