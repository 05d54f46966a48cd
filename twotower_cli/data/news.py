"""A news app's exposure log (`dataset=news`): users, articles and a week of exposures.

Three tab-separated files in `raw_dir`: `user_info_data_5w.csv` (row index, user_id, device, os,
province, city, age, gender; age and gender are `bucket:share,...` strings), `doc_info.txt`
(article_id, title, ctime, img_num, cate, sub_cate, key_words) and `train_data_5w.csv` (row
index, user_id, article_id, expo_time, net_status, flush_nums, exop_position, click, duration).
Times are millisecond epochs. Run by `twotower preprocess dataset=news`; every dropped row is
counted by reason in the preprocess manifest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES
from twotower_cli.data.clean import check_numbers, epoch_seconds, missing_ids
from twotower_cli.data.freshness import age_quantiles, pool_window
from twotower_cli.data.split import DAY
from twotower_cli.data.tables import RawData

USER_FILE, DOC_FILE, LOG_FILE = FILES.news_users, FILES.news_docs, FILES.news_log
USER_COLS = ["user_id", "device", "os", "province", "city", "age", "gender"]
DOC_COLS = ["article_id", "title", "ctime", "img_num", "cate", "sub_cate", "key_words"]
LOG_COLS = ["user_id", "article_id", "expo_time", "net_status", "flush_nums", "exop_position",
            "click", "duration"]  # fmt: skip
FILLED = ["device", "os", "province", "city"]
OTHER_CATE = "其他"  # "other": the app's own bucket for uncategorised articles
USER_FIELDS = {"device": "categorical", "os": "categorical", "province": "categorical",
               "city": "categorical", "age": "categorical", "gender": "categorical"}  # fmt: skip
ITEM_FIELDS = {"cate": "categorical", "sub_cate": "categorical", "title_len": "numeric",
               "img_num": "numeric"}  # fmt: skip
FILLS = ("ffill", "unknown")


def read_table(path: Path, columns: list[str]) -> tuple[pd.DataFrame, int]:
    """A tab-separated file as strings; (table, malformed lines skipped). A leading unnamed
    column (a saved row index) is dropped; every expected column must be there."""
    if not path.exists():
        raise TwoTowerError(f"{path}: file not found")
    # QUOTE_NONE: titles carry bare quotes; a row with the wrong number of fields is skipped
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, on_bad_lines="skip",
                        keep_default_na=False, na_values=[""])  # fmt: skip
    if len(frame.columns) and (frame.columns[0] == "" or frame.columns[0].startswith("Unnamed")):
        frame = frame.drop(columns=frame.columns[0])
    for col in columns:
        if col not in frame.columns:
            raise TwoTowerError(f"{path}: no column {col!r}")
    with open(path, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return frame[columns], max(0, lines - 1 - len(frame))


def top_share(dist: pd.Series) -> pd.Series:
    """'A_0_24:0.40,A_25_29:0.06' -> the bucket with the largest share ('A_0_24'); NaN stays."""
    parts = dist.str.split(",").explode().dropna().str.rsplit(":", n=1, expand=True)
    if parts.empty:
        return pd.Series(np.nan, index=dist.index, dtype=object)
    share = pd.to_numeric(parts[1], errors="coerce").fillna(-1.0)
    frame = pd.DataFrame({"bucket": parts[0].str.strip(), "share": share.to_numpy()},
                         index=parts.index)  # fmt: skip
    best = frame.sort_values("share", ascending=False, kind="stable")
    best = best[~best.index.duplicated(keep="first")]["bucket"]
    return best.reindex(dist.index)


def top_keywords(key_words: pd.Series, k: int) -> pd.Series:
    """'word:weight,...' -> the k heaviest words as a list (empty when missing)."""
    parts = key_words.str.split(",").explode().dropna().str.rsplit(":", n=1, expand=True)
    out = pd.Series([[] for _ in range(len(key_words))], index=key_words.index, dtype=object)
    if parts.empty or parts.shape[1] < 2:
        return out
    weight = pd.to_numeric(parts[1], errors="coerce").fillna(0.0).to_numpy()
    frame = pd.DataFrame(
        {"row": parts.index, "word": parts[0].str.strip().to_numpy(), "w": weight}
    )
    frame = frame[frame["word"] != ""].sort_values(["row", "w"], ascending=[True, False],
                                                  kind="stable")  # fmt: skip
    frame = frame[frame.groupby("row").cumcount() < k]
    lists = frame.groupby("row", sort=False)["word"].agg(list)
    out.loc[lists.index] = lists
    return out


def read_users(path: Path, fill: str, counts: dict) -> pd.DataFrame:
    users, counts["users_malformed_lines"] = read_table(path, USER_COLS)
    counts["users_rows"] = len(users)
    users = users[~missing_ids(users["user_id"])]
    dup = users["user_id"].duplicated()
    counts["users_dropped_duplicate"] = int(dup.sum())
    users = users[~dup].reset_index(drop=True)
    for col in FILLED:
        counts[f"users_missing_{col}"] = int(users[col].isna().sum())
        if fill == "ffill":
            users[col] = users[col].ffill()
    users["age"] = top_share(users["age"])
    users["gender"] = top_share(users["gender"])
    return users


def read_docs(path: Path, top_k: int, counts: dict) -> pd.DataFrame:
    docs, counts["docs_malformed_lines"] = read_table(path, DOC_COLS)
    counts["docs_rows"] = len(docs)
    ctime = pd.to_numeric(docs["ctime"], errors="coerce")
    # dirty rows carry text (`Android`, ...) where the creation time belongs
    bad = ctime.isna() | missing_ids(docs["article_id"])
    counts["docs_dropped_bad_ctime"] = int(bad.sum())
    docs = docs[~bad].assign(ctime=epoch_seconds(ctime[~bad], path, "ctime", per_second=1000))
    dup = docs["article_id"].duplicated()
    counts["docs_dropped_duplicate"] = int(dup.sum())
    docs = docs[~dup].reset_index(drop=True)
    img = check_numbers(pd.to_numeric(docs["img_num"], errors="coerce"), path, "img_num")
    counts["docs_img_num_not_a_number"] = int((img.isna() & docs["img_num"].notna()).sum())
    docs["img_num"] = img.fillna(0.0)
    counts["docs_missing_cate"] = int(docs["cate"].isna().sum())
    docs["cate"] = docs["cate"].fillna(OTHER_CATE)
    docs["title_len"] = docs["title"].str.len().fillna(0).astype(np.float64)
    if top_k > 0:
        docs["key_words"] = top_keywords(docs["key_words"], top_k)
    return docs


def window_seconds(start: str, end: str, utc_offset_hours: float) -> tuple[int, int]:
    """Local wall-clock window -> [start, end] as epoch seconds (end inclusive)."""
    try:
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    except ValueError as err:
        raise TwoTowerError(f"dataset.load.start/end: not a date-time ({err})") from err
    shift = int(round(utc_offset_hours * 3600))
    return int(lo.timestamp()) - shift, int(hi.timestamp()) - shift


def read_log(path: Path, long_read_seconds: float, counts: dict) -> pd.DataFrame:
    log, counts["log_malformed_lines"] = read_table(path, LOG_COLS)
    counts["log_rows"] = len(log)
    expo = pd.to_numeric(log["expo_time"], errors="coerce")
    bad = expo.isna() | missing_ids(log["user_id"]) | missing_ids(log["article_id"])
    counts["log_dropped_bad_expo_time"] = int(bad.sum())
    log, expo = log[~bad], expo[~bad]
    click = pd.to_numeric(log["click"], errors="coerce").fillna(0).to_numpy() > 0
    duration = pd.to_numeric(log["duration"], errors="coerce")
    duration = check_numbers(duration, path, "duration").fillna(0.0).to_numpy()
    return pd.DataFrame(
        {
            "user_id": log["user_id"].to_numpy(),
            "item_id": log["article_id"].to_numpy(),
            "timestamp": epoch_seconds(expo, path, "expo_time", per_second=1000),
            "click": click.astype(np.int8),
            "long_read": (click & (duration >= long_read_seconds)).astype(np.int8),
            "duration": duration.astype(np.float32),
        }
    )


def pool_days(
    log: pd.DataFrame,
    ctime: np.ndarray,
    end: int,
    candidate_days: float | str,
    target: float,
    test_days: float,
    valid_days: float,
    counts: dict,
) -> tuple[float, np.ndarray]:
    """(candidate window in days, ages at click of the clicks before the held-out days): the
    window is a number as given, or `auto`: measured on those clicks (freshness.pool_window);
    the window and the age quantiles go into `counts`."""
    train = (log["timestamp"].to_numpy() < end - (test_days + valid_days) * DAY) & (
        log["click"].to_numpy() > 0
    )
    ages = log["timestamp"].to_numpy()[train] - ctime[train]
    if len(ages):
        counts.update(age_quantiles(ages))
    if candidate_days != "auto":
        try:
            days = float(candidate_days)
        except (TypeError, ValueError):
            raise TwoTowerError(
                f"dataset.load.candidate_days: {candidate_days!r} is neither 'auto' nor a number"
            ) from None
    else:
        if not 0 < target <= 1:
            raise TwoTowerError(f"dataset.load.candidate_coverage_target: {target} not in (0, 1]")
        if not len(ages):
            raise TwoTowerError(
                "dataset.load.candidate_days: auto needs clicks before the held-out days; "
                "none are left: set a number of days"
            )
        times = log["timestamp"].to_numpy()[train]
        days = pool_window(ages, times, end, int(round(test_days * DAY)), target) / DAY
    counts["candidate_days"] = round(days, 4)
    return days, ages


def _drop(frame: pd.DataFrame, bad: np.ndarray, counts: dict, name: str) -> pd.DataFrame:
    counts[name] = int(bad.sum())
    return frame[~bad]


def raw_files(raw_dir: str | Path = "data/raw/news", **_: object) -> list[Path]:
    """The files `load` reads (data/sources.py records their identity)."""
    return [p for p in (Path(raw_dir) / f for f in (USER_FILE, DOC_FILE, LOG_FILE)) if p.is_file()]


def load(
    raw_dir: str | Path = "data/raw/news",
    start: str = "2021-06-24 00:00:00",
    end: str = "2021-06-30 23:59:59",
    utc_offset_hours: float = 8.0,
    fill: str = "ffill",
    long_read_seconds: float = 60.0,
    candidate_days: float | str = "auto",
    candidate_coverage_target: float = 0.95,
    test_days: float = 1.0,
    valid_days: float = 0.5,
    keywords: int = 0,
    **_: object,
) -> RawData:
    """The news log as RawData: `click` and `long_read` labels, exposures kept (click 0),
    candidates = articles created within `candidate_days` before the window's end (`auto`:
    the window that holds `candidate_coverage_target` of the training period's clicks, from
    their articles' ages at click; `test_days`/`valid_days`: the split's held-out days)."""
    if fill not in FILLS:
        raise TwoTowerError(f"dataset.load.fill: {fill!r} not in {FILLS}")
    raw_dir = Path(raw_dir)
    counts: dict[str, int] = {}
    users = read_users(raw_dir / USER_FILE, fill, counts)
    docs = read_docs(raw_dir / DOC_FILE, keywords, counts)
    log = read_log(raw_dir / LOG_FILE, long_read_seconds, counts)
    lo, hi = window_seconds(start, end, utc_offset_hours)
    ts = log["timestamp"].to_numpy()
    log = _drop(log, (ts < lo) | (ts > hi), counts, "log_dropped_outside_window")
    ctime = docs.set_index("article_id")["ctime"].reindex(log["item_id"]).to_numpy()
    log = _drop(log, np.isnan(ctime), counts, "log_dropped_article_not_in_doc_info")
    ctime = ctime[~np.isnan(ctime)]
    # an exposure before the article existed cannot happen, and would leak the future
    early = log["timestamp"].to_numpy() < ctime
    log = _drop(log, early, counts, "log_dropped_before_ctime")
    known = log["user_id"].isin(users["user_id"]).to_numpy()
    ctime = ctime[~early][known].astype(np.int64)
    log = _drop(log, ~known, counts, "log_dropped_unknown_user").reset_index(drop=True)
    counts["log_kept"] = len(log)
    if log.empty:
        raise TwoTowerError(f"{raw_dir / LOG_FILE}: no exposures left inside {start} .. {end}")
    # candidates: what exists when the test day ends and is still fresh
    days, ages = pool_days(log, ctime, hi + 1, candidate_days, candidate_coverage_target,
                           test_days, valid_days, counts)  # fmt: skip
    fresh = (docs["ctime"] <= hi) & (docs["ctime"] > hi - days * DAY)
    candidates = docs.loc[fresh, "article_id"]
    # the catalogue: articles anybody saw, plus every candidate (new ones have features only)
    items = docs[docs["article_id"].isin(log["item_id"]) | fresh]
    counts["articles"] = len(items)
    item_fields = dict(ITEM_FIELDS, **({"key_words": "multihot"} if keywords > 0 else {}))
    users = users[users["user_id"].isin(log["user_id"])]
    return RawData(
        interactions=log,
        users=users[["user_id", *USER_FIELDS]],
        items=items.rename(columns={"article_id": "item_id"})[["item_id", *item_fields]],
        user_fields=dict(USER_FIELDS),
        item_fields=item_fields,
        counts=counts,
        window_end=hi + 1,
        candidates=candidates.reset_index(drop=True),
        item_created=items["ctime"].reset_index(drop=True),
        click_ages=ages,
        candidate_seconds=int(round(days * DAY)),
        source=str(raw_dir / LOG_FILE),
        column_names={
            "user_id": "user_id",
            "item_id": "article_id",
            "timestamp": "expo_time",
            "click": "click",
        },  # fmt: skip
    )
