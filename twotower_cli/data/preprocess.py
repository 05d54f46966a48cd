"""Raw tables -> encoded feature tables and a split of positives (`twotower preprocess`).

The log is processed by the out-of-core engine (data/engine.py: DuckDB, the queries in
data/sql.py), so its size is bounded by disk, not memory; the user and item tables (one row
per entity) are encoded in pandas. Two splits: `per_user` (each user's latest positives held
out) and `temporal` (the last `test_days` of the log are the test period, the `valid_days`
before it validation, the rest train; vocabularies and numeric statistics then come from the
training period only). Rows whose label is not positive are kept, from before each user's
held-out period, as `exposures`: shown but not chosen, real negatives a sampler may use.

`write_preprocess` writes every table as parquet (the stage); `preprocess` returns them as
DataFrames (tests, benchmarks): the same queries either way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.core.settings import check_bounds
from twotower_cli.data import protocol as protocols
from twotower_cli.data import sql
from twotower_cli.data.clean import TIME_MAX, TIME_MIN, drop_missing_keys, time_error
from twotower_cli.data.engine import ENGINE_MEMORY, Engine, check_memory, log_rows
from twotower_cli.data.freshness import (
    HOUR,
    click_age_log_density,
    log_virality,
    period_log_prior,
)
from twotower_cli.data.split import DAY, temporal_bounds
from twotower_cli.data.tables import Encoded, RawData, encode_side, encode_values

SPLIT_KINDS = ("per_user", "temporal")


@dataclass
class SplitSettings:
    kind: str = field(default="per_user", metadata={"choices": SPLIT_KINDS})
    test_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    valid_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    min_positives: int = field(default=5, metadata={"ge": 1})
    # temporal: days counted back from the window's end (fractions allowed: 0.5 = 12 hours)
    test_days: float = field(default=1.0, metadata={"gt": 0.0})
    valid_days: float = field(default=1.0, metadata={"gt": 0.0})

    def __post_init__(self) -> None:
        check_bounds(self, "dataset.split")


@dataclass
class DatasetSettings:
    """The keys every `conf/dataset/*.yaml` shares (conf/dataset/csv.yaml writes them all):
    `load` is its loader's arguments (pipeline/config.py checks them against its signature),
    `split` a SplitSettings and `protocol` a protocol.ProtocolSettings, checked as their own."""

    engine_memory: str | None = field(default=ENGINE_MEMORY, metadata={"check": check_memory})
    load: Any = None
    # the loader's 0/1 positive column, and the label columns kept for multi-task models
    label: str = "label"
    tasks: list[str] = field(default_factory=list)
    split: Any = None
    protocol: Any = None


def encode(raw: RawData, fit_users=None, fit_items=None) -> Encoded:
    """Encode both sides; fit_users/fit_items (raw ids) restrict what vocabularies learn from."""
    users, user_vocabs, user_specs = encode_side(
        raw.users, "user_id", raw.user_fields, "user", fit_users
    )
    items, item_vocabs, item_specs = encode_side(
        raw.items, "item_id", raw.item_fields, "item", fit_items
    )
    return Encoded(
        users=users,
        items=items,
        vocabs={"user": user_vocabs, "item": item_vocabs},
        schema={"user": user_specs, "item": item_specs},
    )


def item_created(raw: RawData, enc: Encoded) -> np.ndarray:
    """Each item's creation time (epoch seconds) in item id order (id i at position i - 1)."""
    created = pd.Series(raw.item_created.to_numpy(), index=raw.items["item_id"].to_numpy())
    created = created[~created.index.duplicated()]
    return created.reindex(enc.vocabs["item"]["item"]).to_numpy(np.int64)


@dataclass
class Plan:
    """What `_plan` leaves in the engine: the encoded sides, one query per output table (in
    the order they are written) and the row counts so far."""

    enc: Encoded
    queries: dict[str, str]
    counts: dict[str, int]
    cleaned: dict[str, int]


def preprocess(
    raw: RawData, label: str, split: SplitSettings, tasks: tuple[str, ...] = (),
    engine: Engine | None = None, protocol: protocols.ProtocolSettings | None = None,
) -> tuple[Encoded, dict[str, pd.DataFrame], dict[str, int]]:  # fmt: skip
    """Encode features, keep positives, split them; return tables, splits and row counts.

    The returned tables are train/valid/test, plus `exposures` when the log has rows whose
    label is not positive. Encoded.candidates is set when the loader names candidate items.
    With `tasks` (multi-task labels), the splits of the label's positives are unchanged and
    `tasks_train/valid/test` add every row positive for some task (see sql.task_rows).
    """
    with engine or Engine() as eng:
        plan = _plan(eng, raw, label, split, tuple(tasks), protocol)
        frames, made = {}, {}
        for name, query in plan.queries.items():
            frames[name] = made[query].copy() if query in made else eng.df(query)
            made.setdefault(query, frames[name])
        test_users = int(frames["test"]["user"].nunique())
    sizes = {name: len(frame) for name, frame in frames.items()}
    return plan.enc, frames, _counts(raw, plan, sizes, test_users)


def write_preprocess(
    raw: RawData, label: str, split: SplitSettings, tasks: tuple[str, ...], out: Path,
    engine: Engine, protocol: protocols.ProtocolSettings | None = None,
) -> tuple[Encoded, dict[str, int], list[str]]:  # fmt: skip
    """`preprocess`, each table written by the engine as `<name>.parquet` in `out`; returns
    (encoded sides, counts, the parquet files' names)."""
    plan = _plan(engine, raw, label, split, tuple(tasks), protocol)
    sizes, made = {}, {}
    for name, query in plan.queries.items():
        path = out / FILES.table(name)
        if query in made:  # the same table under another name
            shutil.copyfile(made[query], path)
        else:
            engine.write(query, path)
            made[query] = path
        sizes[name] = pq.ParquetFile(path).metadata.num_rows
    test_users = engine.one("SELECT count(DISTINCT \"user\") FROM split WHERE part = 'test'")[0]
    names = [FILES.table(name) for name in plan.queries]
    return plan.enc, _counts(raw, plan, sizes, int(test_users)), names


def _counts(raw: RawData, plan: Plan, sizes: dict, test_users: int) -> dict[str, int]:
    return {**raw.counts, **plan.counts, **sizes, "test_users": test_users, **plan.cleaned}


def _plan(eng: Engine, raw: RawData, label: str, split: SplitSettings, tasks: tuple,
          proto: protocols.ProtocolSettings | None = None) -> Plan:  # fmt: skip
    """Run the cleaning, encoding and split queries; return the output tables' queries."""
    source = raw.interactions
    n_rows = log_rows(source)
    if n_rows == 0:
        raise TwoTowerError(f"{raw.source}: the interaction log is empty")
    eng.source("src", source)
    types = eng.types("src")
    cleaned, n_clean = _clean(eng, raw, types, n_rows)
    raw = replace(raw, users=drop_missing_keys(raw.users, "user_id"),
                  items=drop_missing_keys(raw.items, "item_id"))  # fmt: skip
    proto = proto if proto is not None and proto.filters else None
    if proto is not None:  # its positives and k-core decide the users and items; no task tables
        tasks = ()
        raw, kept = protocols.restrict(
            eng, raw, proto, protocols.positive_sql(proto, label, types)
        )
        cleaned = {**cleaned, **kept}
    maps, joins = _maps(eng, raw, types)
    temporal = split.kind == "temporal" and (proto is None or proto.split == "dataset")
    if temporal:
        enc, (valid_start, test_start, end) = _encode_temporal(eng, raw, split, maps, joins)
    else:
        enc = encode(raw)
    counts = _encode_log(eng, types, joins, n_clean)
    for col in (label, *tasks) if proto is None else tasks:
        if col not in types:
            kind = "label" if col == label else "task"
            name = raw.column_names.get("label", label) if col == label else col
            raise TwoTowerError(f"{raw.source}: no {kind} column {name!r}")
    names = list(eng.types("log"))[:-1]  # user, item, timestamp, the other columns (not _row)
    pos = sql.positive(label, types[label]) if proto is None else (
        protocols.positive_sql(proto, label, types))  # fmt: skip
    eng.run(f"CREATE VIEW positives AS SELECT * FROM log WHERE {pos}")
    counts["positives"] = eng.one("SELECT count(*) FROM positives")[0]
    if temporal:
        eng.table("split", sql.temporal_split("positives", names, valid_start, test_start, end))
        outside = eng.one("SELECT count(*) FROM split WHERE part IS NULL")[0]
        counts.update(positives_outside_window=outside, valid_start=valid_start,
                      test_start=test_start)  # fmt: skip
    elif proto is not None and proto.split != "dataset":
        protocols.split_table(eng, proto, "positives", names)
    else:
        fractions = (split.test_fraction, split.valid_fraction, split.min_positives)
        eng.table("split", sql.per_user_split("positives", names, *fractions))
    if raw.candidates is not None:
        counts.update(_candidates(eng, raw, enc))
    if raw.item_created is not None and raw.click_ages is not None and temporal:
        clicked = lambda t: eng.numpy(  # noqa: E731
            f'SELECT "item" FROM log WHERE {pos} AND "timestamp" >= {t - DAY} '
            f'AND "timestamp" < {t} ORDER BY _row')  # fmt: skip
        freshness(raw, enc, clicked, valid_start, test_start, end)
    if not eng.one("SELECT count(*) FROM split WHERE part = 'test'")[0]:
        raise _no_test_users(raw, split, label)
    before = valid_start if temporal else None
    queries = _output_queries(eng, names, types, label, tasks, pos, before)
    return Plan(enc, queries, counts, cleaned)


def _encode_temporal(eng: Engine, raw: RawData, split: SplitSettings, maps: dict,
                     joins: dict) -> tuple[Encoded, tuple[int, int, int]]:  # fmt: skip
    """The sides encoded with vocabularies learnt from the ids seen before validation, and
    the temporal split's (valid_start, test_start, end)."""
    last = eng.one('SELECT max("timestamp") FROM clean')[0]
    bounds = temporal_bounds(np.array([last]), split.valid_days, split.test_days, raw.window_end)
    early = {}  # the raw ids seen before validation: what vocabularies learn from
    for side, keys in maps.items():
        m = side[0]
        seen = eng.numpy(f'SELECT DISTINCT {m}."{side}" FROM clean c JOIN {m}map {m} '
                         f'ON {joins[side]} WHERE c."timestamp" < {bounds[0]}')  # fmt: skip
        early[side] = keys[seen - 1]
    return encode(raw, early["user"], early["item"]), bounds


def _output_queries(eng: Engine, names: list[str], types: dict, label: str, tasks: tuple,
                    pos: str, before: int | None) -> dict[str, str]:  # fmt: skip
    """{table name: the query of its rows} over `log` and `split`; `before` is a temporal
    split's validation start (exposures end there), None for the per-user split."""
    eng.table("firsts", sql.firsts("split"))
    queries = {p: sql.part_rows("split", names, p) for p in sql.PARTS}
    if tasks:
        not_label = f"coalesce({sql.q(label)} <= 0, false)"
        any_task = "(" + " OR ".join(sql.positive(t, types[t]) for t in tasks) + ")"
        others = eng.one(f"SELECT count(*) FROM log WHERE {not_label} AND {any_task}")[0]
        # no other task's rows and the parts already in (user, timestamp, item) order:
        # tasks_<p> is <p> (written once, copied)
        same = not others and before is None
        for p in sql.PARTS:
            queries[f"tasks_{p}"] = queries[p] if same else sql.task_rows(
                "log", "split", names, p, not_label, any_task)  # fmt: skip
    cut = "" if before is None else f' AND "timestamp" < {before}'
    if eng.one(f"SELECT count(*) FROM log WHERE NOT {pos}{cut}")[0]:
        queries["exposures"] = sql.exposures("log", "split", names, pos, before)
    return queries


def _clean(eng: Engine, raw: RawData, types: dict, n_rows: int) -> tuple[dict, int]:
    """Table `clean`: the log checked for absurd times, without rows with a missing id and
    without exact duplicate rows (data/clean.py's rules); (counts added to the loader's, rows
    left)."""
    bad = eng.one(sql.first_bad_time("src", "timestamp", types["timestamp"], TIME_MIN, TIME_MAX))
    if bad is not None:
        row, value = bad
        col = raw.column_names.get("timestamp", "timestamp")
        if value is None or value != value:  # null or NaN: the loaders' message
            raise TwoTowerError(f"{raw.source}: column {col!r} row {eng.label(row)} has no time")
        raise time_error(raw.source, col, eng.label(row), value, value > TIME_MAX)
    names = [c for c in types if c != "_row"]
    missing = f"({sql.missing('user_id', types['user_id'])} OR " \
              f"{sql.missing('item_id', types['item_id'])})"  # fmt: skip
    kept, distinct = eng.one(sql.with_ids("src", names, missing))
    if kept == distinct:  # no exact duplicates: the clean log is a filter
        eng.run(
            f"CREATE VIEW clean AS SELECT {sql.cols(names)}, _row FROM src WHERE NOT {missing}"
        )
        n_clean = kept
    else:
        eng.table("clean", sql.clean("src", names, missing))
        n_clean = eng.one("SELECT count(*) FROM clean")[0]
    if n_clean == 0:
        raise TwoTowerError(f"{raw.source}: no interactions left after dropping missing ids")
    cleaned = {"dropped_missing_id": n_rows - int(kept), "duplicates_dropped": int(kept - n_clean)}
    return {k: raw.counts.get(k, 0) + n for k, n in cleaned.items()}, int(n_clean)


def _maps(eng: Engine, raw: RawData, types: dict) -> tuple[dict, dict]:
    """Tables `umap(user_id, user)` and `imap(item_id, item)`: each raw id with its dense id
    (encode_side's order: the table's order, duplicates dropped); returns ({side: raw ids by
    dense id - 1}, {side: the join condition of `clean c` with the side's map})."""
    maps, joins = {}, {}
    for side in ("user", "item"):
        key = f"{side}_id"
        ids = (raw.users if side == "user" else raw.items)[key].drop_duplicates().to_numpy()
        name = f"{side[0]}map"
        eng.frame(name, pd.DataFrame({key: ids, side: np.arange(1, len(ids) + 1)}))
        same = sql.is_number(types[key]) == sql.is_number(eng.types(name)[key])
        maps[side], joins[side] = ids, sql.join_key(f"c.{key}", f"{name[0]}.{key}", same)
    return maps, joins


def _encode_log(eng: Engine, types: dict, joins: dict, n_clean: int) -> dict[str, int]:
    """Table `log`: every clean row whose user and item are known, with dense ids (`_row`
    keeps the file order); counts the rows and the ones dropped for an unknown id."""
    ts = 'c."timestamp"'
    time_expr = f"CAST(trunc({ts}) AS BIGINT)" if sql.is_float(types["timestamp"]) else (
        f"CAST({ts} AS BIGINT)")  # fmt: skip
    others = sorted(set(types) - {"user_id", "item_id", "timestamp", "_row"})
    query = sql.encoded_log("clean", others, time_expr, joins["user"], joins["item"])
    eng.table("log", query)
    n_log = eng.one("SELECT count(*) FROM log")[0]
    return {"interactions": n_clean, "dropped_unknown_id": n_clean - n_log}


def _candidates(eng: Engine, raw: RawData, enc: Encoded) -> dict[str, int]:
    """The loader's candidate items as ids; the pool limits what is ranked, not the truth:
    test clicks outside it stay and are counted."""
    cand = np.unique(encode_values(raw.candidates, enc.vocabs["item"]["item"]))
    enc.candidates = cand[cand > 0]
    eng.frame("cands", pd.DataFrame({"item": enc.candidates}))
    outside = eng.one(
        "SELECT count(*) FROM split s WHERE part = 'test' "
        'AND NOT EXISTS (SELECT 1 FROM cands c WHERE c."item" = s."item")'
    )[0]
    return {"test_outside_candidates": int(outside), "candidates": len(enc.candidates)}


def freshness(raw: RawData, enc: Encoded, clicked: Callable[[int], np.ndarray],
              valid_start: int, test_start: int, end: int) -> None:  # fmt: skip
    """The freshness priors of the test and validation periods (data/freshness.py);
    `clicked(t)` gives the items of the positives in the day before t."""
    created = item_created(raw, enc)
    density = click_age_log_density(
        raw.click_ages, int(np.max(raw.click_ages, initial=0) // HOUR) + 2
    )

    def prior(lo: int, hi: int) -> np.ndarray:
        """log(share of [lo, hi)'s clicks by age) + log(virality in the day before lo)."""
        viral = log_virality(created, clicked(lo), lo - DAY, lo, density)
        age = period_log_prior(created, lo, hi, density)
        return np.concatenate([[0.0], age + viral]).astype(np.float32)

    enc.item_log_prior = prior(test_start, end)
    enc.valid_item_log_prior = prior(valid_start, test_start)
    if raw.candidate_seconds is not None:
        fresh = (created < test_start) & (created >= test_start - raw.candidate_seconds)
        enc.valid_candidates = np.flatnonzero(fresh) + 1


def _no_test_users(raw: RawData, split: SplitSettings, label: str) -> TwoTowerError:
    col = raw.column_names.get
    if split.kind == "temporal":
        why = (
            f"column {col('timestamp', 'timestamp')!r}: no positive in the last "
            f"{split.test_days:g} day(s) of the window"
        )
    else:
        why = (
            f"column {col('user_id', 'user_id')!r}: no user has >= {split.min_positives} "
            f"positives in column {col('label', label)!r}"
        )
    return TwoTowerError(f"{raw.source}: split leaves no test users: {why}")
