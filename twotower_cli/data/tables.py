"""Raw tables -> encoded tables: vocabularies, feature specs and the on-disk layout.

Used by `twotower preprocess` (encode + save) and by every later stage (load).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.data.clean import check_numbers
from twotower_cli.data.engine import LogFile

KINDS = ("categorical", "multihot", "numeric")


@dataclass
class Field:
    """One input feature of a tower. Ids start at 1; 0 is padding/unknown."""

    name: str
    kind: str
    vocab_size: int = 0
    max_len: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TwoTowerError(f"feature {self.name!r}: kind {self.kind!r} not in {KINDS}")


@dataclass
class RawData:
    """What a loader returns: raw values, one row per interaction / user / item.

    interactions has user_id, item_id, timestamp and label columns (a DataFrame, or a LogFile:
    parquet on disk that the preprocess engine scans without loading it); users/items have
    their id column plus the raw feature columns named in user_fields/item_fields
    (name -> kind)
    """

    interactions: pd.DataFrame | LogFile
    users: pd.DataFrame
    items: pd.DataFrame
    user_fields: dict[str, str]
    item_fields: dict[str, str]
    counts: dict = field(default_factory=dict)
    # optional: the end (exclusive, epoch seconds) of the log's window; temporal splits count
    # days back from it (None: last timestamp + 1)
    window_end: int | None = None
    # optional: raw ids of the items evaluation may rank (None: the whole catalogue)
    candidates: pd.Series | None = None
    # optional: each item's creation time (epoch seconds, aligned with `items`) and the ages
    # (seconds) of the training period's positives at their time: the freshness prior's inputs
    item_created: pd.Series | None = None
    click_ages: np.ndarray | None = None
    # optional: how fresh a candidate must be (seconds before a period's end): validation's
    # pool is cut by it from the items' creation times as the test's is
    candidate_seconds: int | None = None
    # for error messages: where the log came from, and its raw column names by role
    # (user_id, item_id, timestamp, label -> the name in the user's file)
    source: str = "interactions"
    column_names: dict[str, str] = field(default_factory=dict)


@dataclass
class Encoded:
    """Encoded tables: `user` / `item` are dense ids 1..n (0 = unknown) in every table."""

    users: pd.DataFrame
    items: pd.DataFrame
    vocabs: dict[str, list]
    schema: dict[str, list[Field]]
    # optional: sorted item ids evaluation ranks (saved as candidates.npy); None = all items
    candidates: np.ndarray | None = None
    # optional: log of each item's expected share of test-period clicks by its age alone
    # (index = item id; saved as item_log_prior.npy): the freshness prior of `embed`
    item_log_prior: np.ndarray | None = None
    # optional: validation's pool and prior, as the test's (valid_candidates.npy,
    # valid_item_log_prior.npy)
    valid_candidates: np.ndarray | None = None
    valid_item_log_prior: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def build_vocab(values: pd.Series) -> list:
    """Distinct non-null values, most frequent first (ties by value): id = position + 1."""
    counts = values.dropna().value_counts()
    frame = pd.DataFrame({"v": counts.index, "n": counts.to_numpy()})
    frame["key"] = frame["v"].astype(str)
    frame = frame.sort_values(["n", "key"], ascending=[False, True], kind="stable")
    return [_plain(v) for v in frame["v"]]


def _plain(v):
    """JSON-safe scalar (numpy ints/floats to Python)."""
    return v.item() if hasattr(v, "item") else v


def encode_values(values: pd.Series, vocab: list) -> np.ndarray:
    """Map raw values to ids through a vocabulary; unseen and missing values get 0."""
    ids = pd.Index(vocab).get_indexer(pd.Series(values).to_numpy()) + 1
    return ids.astype(np.int64)


def encode_multihot(lists: pd.Series, vocab: list, max_len: int) -> np.ndarray:
    """Lists of raw values -> [n, max_len] ids, left-aligned, 0-padded, unseen values dropped."""
    flat = lists.reset_index(drop=True).explode().dropna()
    rows = flat.index.to_numpy(dtype=np.int64)
    ids = encode_values(flat, vocab)
    rows, ids = rows[ids > 0], ids[ids > 0]
    # explode keeps row order, so rows is sorted: a value's slot = its offset within its row
    pos = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = pos < max_len
    out = np.zeros((len(lists), max_len), dtype=np.int64)
    out[rows[keep], pos[keep]] = ids[keep]
    return out


def encode_side(
    frame: pd.DataFrame,
    key: str,
    fields: dict[str, str],
    id_name: str,
    fit_keys: pd.Series | np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, list], list[Field]]:
    """Encode one side's table. Row order = id order: the entity with id i sits at row i - 1.

    fit_keys: when given, vocabularies and numeric statistics come only from the rows with
    these keys (a temporal split's training entities); other values become unknown (0).
    """
    frame = frame.drop_duplicates(key).reset_index(drop=True)
    fit = np.ones(len(frame), bool) if fit_keys is None else frame[key].isin(fit_keys).to_numpy()
    id_vocab = [_plain(v) for v in frame[key]]
    out = pd.DataFrame({id_name: np.arange(1, len(frame) + 1, dtype=np.int64)})
    vocabs = {id_name: id_vocab}
    specs = [Field(id_name, "categorical", len(id_vocab) + 1)]
    for name, kind in fields.items():
        if name == key:
            continue
        col = frame[name]
        if kind == "categorical":
            vocab = build_vocab(col[fit])
            out[name] = encode_values(col, vocab)
            specs.append(Field(name, kind, len(vocab) + 1))
        elif kind == "multihot":
            vocab = build_vocab(col[fit].explode())
            width = max(1, int(col.str.len().fillna(0).max()))
            out[name] = list(encode_multihot(col.reset_index(drop=True), vocab, width))
            specs.append(Field(name, kind, len(vocab) + 1, width))
        else:
            values = pd.to_numeric(col, errors="coerce").astype("float64")
            check_numbers(values, f"{id_name} table", name)  # every loader's last guard
            mean, std = float(values[fit].mean()), float(values[fit].std())
            # a constant or empty column: centre it and leave the scale alone
            mean = mean if np.isfinite(mean) else 0.0
            std = std if np.isfinite(std) and std > 0 else 1.0
            out[name] = ((values - mean) / std).fillna(0.0).astype("float32")
            vocab = [mean, std]
            specs.append(Field(name, kind))
        vocabs[name] = vocab
    return out, vocabs, specs


def save_encoded(enc: Encoded, out_dir: Path) -> list[str]:
    """Write users/items parquet, vocabularies and schema JSON; return the file names."""
    enc.users.to_parquet(out_dir / FILES.users, index=False)
    enc.items.to_parquet(out_dir / FILES.items, index=False)
    (out_dir / FILES.vocabs).write_text(json.dumps(enc.vocabs, ensure_ascii=False))
    (out_dir / FILES.schema).write_text(json.dumps(schema_dicts(enc.schema), indent=1))
    names = [FILES.users, FILES.items, FILES.vocabs, FILES.schema]
    if enc.candidates is not None:
        np.save(out_dir / FILES.array("candidates"), enc.candidates.astype(np.int64))
        names.append(FILES.array("candidates"))
    for name in ("item_log_prior", "valid_candidates", "valid_item_log_prior"):
        values = getattr(enc, name)
        if values is not None:
            np.save(out_dir / FILES.array(name), values)
            names.append(FILES.array(name))
    return names


def load_vocabs(prep_dir: Path) -> dict:
    """{side: {feature: vocabulary}} as `save_encoded` wrote it (id = position + 1)."""
    return json.loads((Path(prep_dir) / FILES.vocabs).read_text())


def load_schema(prep_dir: Path) -> dict[str, list[Field]]:
    raw = json.loads((prep_dir / FILES.schema).read_text())
    return {side: [Field(**f) for f in fs] for side, fs in raw.items()}


def feature_arrays(table: pd.DataFrame, fields: list[Field]) -> dict[str, np.ndarray]:
    """A side's whole table as arrays indexed by id (row 0 = padding), for batch gathering
    (models.inputs turns them into tensors; the data layer imports no torch)."""
    out = {}
    for f in fields:
        col = table[f.name]
        if f.kind == "multihot":
            values = np.stack(col.to_numpy()) if len(col) else np.zeros((0, f.max_len))
            values = values.astype(np.int64)
        elif f.kind == "numeric":
            values = col.to_numpy(dtype=np.float32)
        else:
            values = col.to_numpy(dtype=np.int64)
        pad = np.zeros((1, *values.shape[1:]), dtype=values.dtype)
        out[f.name] = np.concatenate([pad, values])
    return out


def load_arrays(prep_dir: Path) -> tuple[dict, dict, dict]:
    """(schema, user feature arrays, item feature arrays) of a preprocess output."""
    schema = load_schema(prep_dir)
    users = feature_arrays(pd.read_parquet(prep_dir / FILES.users), schema["user"])
    items = feature_arrays(pd.read_parquet(prep_dir / FILES.items), schema["item"])
    return schema, users, items


def schema_dicts(schema: dict[str, list[Field]]) -> dict[str, list[dict]]:
    """The schema as plain dicts (what towers and checkpoints take)."""
    return {side: [asdict(f) for f in fs] for side, fs in schema.items()}
