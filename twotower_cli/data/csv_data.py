"""Your own data by config alone (`dataset=csv`, or a YAML of yours that starts from it).

An interaction log (.csv, .tsv or .parquet) and optional user and item tables, described by
`dataset.load.*` keys (see conf/dataset/csv.yaml and docs/datasets.md). Ids are read as text,
so `7` in the log matches `7` in a table whatever the file's types. Every problem with the
input is a one-line error naming the file and the column. Run by `twotower preprocess`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.clean import check_numbers, epoch_seconds, missing_ids, strip_ids
from twotower_cli.data.tables import KINDS, RawData

SUFFIX_SEP = {".csv": ",", ".tsv": "\t", ".txt": "\t"}


def read_any(path: str | Path, sep: str | None, text_cols: list[str]) -> pd.DataFrame:
    """A .csv/.tsv/.parquet file; `text_cols` are read as strings (ids, categories)."""
    path = Path(path)
    if not path.is_file():
        raise TwoTowerError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            for col in (c for c in text_cols if c in frame.columns):
                text = frame[col].astype("string").astype(object)
                frame[col] = text.where(frame[col].notna(), None)
            return frame
        sep = sep or SUFFIX_SEP.get(path.suffix.lower(), ",")
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        dtypes = {c: str for c in text_cols if c in header}
        return pd.read_csv(path, sep=sep, dtype=dtypes, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise TwoTowerError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from err
    except ValueError as err:  # e.g. a malformed parquet footer
        raise TwoTowerError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from err


def need(frame: pd.DataFrame, path, cols: list[str]) -> None:
    for col in cols:
        if col not in frame.columns:
            raise TwoTowerError(f"{path}: no column {col!r}")


def as_number(values: pd.Series, path, col: str) -> pd.Series:
    """Numbers, or an error naming the first value that is not one, or is infinite or absurd
    (clean.check_numbers); missing stays NaN."""
    out = pd.to_numeric(values, errors="coerce")
    bad = (out.isna() & values.notna()).to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        raise TwoTowerError(
            f"{path}: column {col!r} must be numeric; row {values.index[pos]} "
            f"holds {values.iloc[pos]!r}"
        )
    return check_numbers(out, path, col)


def parse_features(specs: list, side: str) -> list[dict]:
    """[{name, type, sep}] from config, checked."""
    out = []
    for i, spec in enumerate(specs or []):
        spec = dict(spec)
        if "name" not in spec:
            raise TwoTowerError(f"dataset.load.{side}_features[{i}]: no `name`")
        kind = spec.get("type", "categorical")
        if kind not in KINDS:
            raise TwoTowerError(
                f"dataset.load.{side}_features[{i}] ({spec['name']}): type {kind!r} not in {KINDS}"
            )
        out.append({"name": spec["name"], "type": kind, "sep": spec.get("sep", "|")})
    return out


def feature_table(path, frame: pd.DataFrame, key: str, feats: list[dict]) -> pd.DataFrame:
    """The id column (text) and the features, typed by kind."""
    need(frame, path, [key] + [f["name"] for f in feats])
    out = pd.DataFrame({"id": frame[key].astype(object)})
    for f in feats:
        col = frame[f["name"]]
        if f["type"] == "numeric":
            out[f["name"]] = as_number(col, path, f["name"]).astype(np.float64)
        elif f["type"] == "multihot":
            lists = col.astype(object).where(col.notna(), "").astype(str).str.split(f["sep"])
            out[f["name"]] = lists.apply(lambda xs: [x for x in xs if x])
        else:
            out[f["name"]] = col.astype(object)
    return out


def _check_known(ids, path, col, table_ids, table_path, strict, counts, name) -> np.ndarray:
    """Rows whose id is in the table; unknown ones counted (or an error when strict)."""
    known = ids.isin(table_ids).to_numpy()
    counts[name] = int((~known).sum())
    if strict and not known.all():
        example = ids[~known].iloc[0]
        raise TwoTowerError(
            f"{path}: column {col!r}: {int((~known).sum())} rows with ids absent from "
            f"{table_path} (e.g. {example!r}); strict=false drops and counts them"
        )
    return known


def raw_files(interactions: str | None = None, users: str | None = None,
              items: str | None = None, **_: object) -> list[Path]:  # fmt: skip
    """The files `load` reads with these settings (data/sources.py records their identity)."""
    return [Path(p) for p in (interactions, users, items) if p and Path(p).is_file()]


def load(
    interactions: str | None = None,
    sep: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = None,
    label_col: str | None = None,
    min_label: float = 1.0,
    users: str | None = None,
    items: str | None = None,
    user_key: str = "user_id",
    item_key: str = "item_id",
    user_features: list | None = None,
    item_features: list | None = None,
    strict: bool = False,
    split_kind: str = "per_user",
    **_: object,
) -> RawData:
    """A user's log and tables as RawData with a 0/1 `label` column."""
    if not interactions:
        raise TwoTowerError("dataset.load.interactions: not set (the interaction log's path)")
    if split_kind == "temporal" and not time_col:
        raise TwoTowerError(f"{interactions}: dataset.split.kind=temporal needs a time_col")
    ufeats = parse_features(user_features, "user")
    ifeats = parse_features(item_features, "item")
    in_log = [*(_text(ufeats) if not users else []), *(_text(ifeats) if not items else [])]
    log = read_any(interactions, sep, [user_col, item_col, *in_log])
    need(log, interactions, [user_col, item_col, *(c for c in (time_col, label_col) if c)])
    if log.empty:
        raise TwoTowerError(f"{interactions}: the interaction log is empty")
    log, counts = _clean_ids(log, user_col, item_col)
    inter = pd.DataFrame(
        {
            "user_id": log[user_col].astype(object).to_numpy(),
            "item_id": log[item_col].astype(object).to_numpy(),
            "timestamp": epoch_seconds(log[time_col], interactions, time_col)
            if time_col
            else np.arange(len(log), dtype=np.int64),  # no times: file order is time order
        }
    )
    if label_col:
        value = as_number(log[label_col], interactions, label_col)
        inter["label"] = (value >= min_label).astype(np.int8).to_numpy()
        inter[label_col if label_col != "label" else "label_value"] = value.to_numpy()
    else:
        inter["label"] = np.int8(1)

    keep = np.ones(len(inter), bool)
    tables = {}
    for side, path, key, feats, col in (
        ("user", users, user_key, ufeats, user_col),
        ("item", items, item_key, ifeats, item_col),
    ):
        if path:
            table = feature_table(path, read_any(path, None, [key, *_text(feats)]), key, feats)
            table["id"], counts[f"{side}s_ids_stripped"] = strip_ids(table["id"])
            missing = missing_ids(table["id"])
            counts[f"{side}s_dropped_missing_id"] = int(missing.sum())
            table = table[~missing].reset_index(drop=True)
            dup = table["id"].duplicated()
            counts[f"{side}s_dropped_duplicate"] = int(dup.sum())
            table = table[~dup].reset_index(drop=True)
            keep &= _check_known(inter[f"{side}_id"], interactions, col, table["id"], path,
                                 strict, counts, f"dropped_{side}_not_in_{side}s")  # fmt: skip
        elif feats:  # a denormalised export: the features are log columns
            table = _table_from_log(interactions, log, inter["timestamp"], col, feats)
        else:
            table = pd.DataFrame({"id": pd.unique(inter[f"{side}_id"])})
        tables[side] = table.rename(columns={"id": f"{side}_id"})
    inter = inter[keep].reset_index(drop=True)
    if inter.empty:
        raise TwoTowerError(f"{interactions}: no interactions left after dropping unknown ids")
    counts["log_kept"] = len(inter)
    names = {"user_id": user_col, "item_id": item_col, "timestamp": time_col or "(none)",
             "label": label_col or "(every row)"}  # fmt: skip
    return RawData(
        interactions=inter,
        users=tables["user"],
        items=tables["item"],
        user_fields={f["name"]: f["type"] for f in ufeats},
        item_fields={f["name"]: f["type"] for f in ifeats},
        counts=counts,
        source=str(interactions),
        column_names=names,
    )


def _clean_ids(log: pd.DataFrame, user_col: str, item_col: str) -> tuple[pd.DataFrame, dict]:
    """Ids stripped of surrounding spaces, rows with a missing id or repeating an earlier row
    in full dropped; (log, counts). Rows keep their file numbers."""
    counts = {"log_rows": len(log), "ids_stripped": 0}
    for col in (user_col, item_col):
        log[col], stripped = strip_ids(log[col])
        counts["ids_stripped"] += stripped
    # `NaN`, `NULL`, `None` or empty: a missing id, not an id
    missing = missing_ids(log[user_col]) | missing_ids(log[item_col])
    counts["dropped_missing_id"] = int(missing.sum())
    log = log[~missing]
    dup = log.duplicated().to_numpy()
    counts["duplicates_dropped"] = int(dup.sum())
    return log[~dup], counts


def _table_from_log(path, log: pd.DataFrame, times: pd.Series, key: str, feats: list[dict]):
    """Features held in the log itself (no user or item table): each id takes the values of
    its latest row (by time, then file order), as a profile that changes takes its newest."""
    order = np.argsort(times.to_numpy(), kind="stable")
    latest = log.iloc[order].drop_duplicates(key, keep="last")
    return feature_table(path, latest, key, feats)


def _text(feats: list[dict]) -> list[str]:
    return [f["name"] for f in feats if f["type"] != "numeric"]
