"""A generated news exposure log in the exact format of `dataset=news`, dirty rows included.

`write_news(raw_dir)` writes user_info_data_5w.csv, doc_info.txt and train_data_5w.csv and
returns how many dirty rows of each kind it planted. Planted preference: every user has a home
category and clicks its articles 30 times as often as others; a user's home category shows in
no user feature, so a model must learn it from the clicks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400
CATES = ["科技", "体育", "娱乐", "财经", "汽车", "健康"]
# 2021-06-24 00:00:00 at UTC+8 (the loader's default window and offset)
START = int(pd.Timestamp("2021-06-24 00:00:00").timestamp()) - 8 * 3600
DAYS = 7


def _dist(rng: np.random.Generator, buckets: list[str], n: int) -> list[str]:
    """n distribution strings 'bucket:share,...' with shares rounded to 2 decimals."""
    w = rng.dirichlet(np.ones(len(buckets)), n).round(2)
    return [",".join(f"{b}:{s:.2f}" for b, s in zip(buckets, row, strict=True)) for row in w]


def write_news(raw_dir: Path, n_users: int = 400, per_day: int = 40, seed: int = 0,
               expos_per_day: int = 8) -> dict[str, int]:  # fmt: skip
    rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    planted: dict[str, int] = {}

    # users: ids u0.., home category = id % len(CATES)
    uid = np.array([f"{100000 + i}" for i in range(n_users)])
    home = np.arange(n_users) % len(CATES)
    users = pd.DataFrame(
        {
            "user_id": uid,
            "device": rng.choice(["V2054A", "PACM00", "M2007J3SC", "SM-G9860"], n_users),
            "os": rng.choice(["Android", "IOS"], n_users),
            "province": rng.choice(["广东", "山东", "河南", "四川"], n_users),
            "city": rng.choice(["广州", "济南", "郑州", "成都", "深圳"], n_users),
            "age": _dist(rng, ["A_0_24", "A_25_29", "A_30_39", "A_40+"], n_users),
            "gender": _dist(rng, ["female", "male"], n_users),
        }
    )
    missing = {"province": [3, 10, 11, 50, 77], "city": [4, 12, 90], "device": [5, 6],
               "os": [7, 8]}  # fmt: skip
    for col, rows in missing.items():
        users.loc[rows, col] = None
        planted[f"users_missing_{col}"] = len(rows)
    users = pd.concat([users, users.iloc[[20]]], ignore_index=True)  # one duplicated user
    planted["users_dropped_duplicate"] = 1
    users.to_csv(raw_dir / "user_info_data_5w.csv", sep="\t")

    # articles created from 45 days before the window to its last day, per_day a day
    first_day = -45
    n_docs = (DAYS - first_day) * per_day
    doc_day = np.repeat(np.arange(first_day, DAYS), per_day)
    ctime_s = START + doc_day * DAY + rng.integers(0, DAY - 3600, n_docs)
    cate_idx = rng.integers(0, len(CATES), n_docs)
    aid = np.array([f"{300000 + i}" for i in range(n_docs)])
    word_idx, weight = rng.integers(0, 5, n_docs), rng.random(n_docs)
    words = [
        f"词{c}_{j}:{w:.3f},热点:{w / 2:.3f}"
        for c, j, w in zip(cate_idx, word_idx, weight, strict=True)
    ]
    docs = pd.DataFrame(
        {
            "article_id": aid,
            "title": [
                f"标题{i}" + "新" * int(k) for i, k in enumerate(rng.integers(0, 20, n_docs))
            ],
            "ctime": (ctime_s * 1000 + rng.integers(0, 1000, n_docs)).astype(str),
            "img_num": rng.integers(0, 10, n_docs).astype(str),
            "cate": [CATES[c] for c in cate_idx],
            "sub_cate": [
                f"{CATES[c]}/{j}"
                for c, j in zip(cate_idx, rng.integers(0, 3, n_docs), strict=True)
            ],  # fmt: skip
            "key_words": words,
        }
    )
    # dirty but kept: text img_num -> 0, no cate -> 其他, no sub_cate, no title (title_len 0)
    docs.loc[[100, 101, 102, 103], "img_num"] = "abc"
    planted["docs_img_num_not_a_number"] = 4
    docs.loc[[110, 111, 112, 113, 114], "cate"] = None
    planted["docs_missing_cate"] = 5
    docs.loc[[120, 121, 122], "sub_cate"] = None
    docs.loc[[130, 131, 132], "title"] = None
    docs.loc[[140], "key_words"] = None
    # a section that starts on the test day: unknown to the vocabularies fitted on train
    docs.loc[np.flatnonzero(doc_day == DAYS - 1)[::10], "sub_cate"] = "突发/0"
    # dirty and dropped: extra articles whose ctime holds text or nothing
    bad_ids = ["900001", "900002", "900003", "900004", "900005"]
    bad = pd.DataFrame(
        {
            "article_id": bad_ids,
            "title": ["坏行"] * 5,
            "ctime": ["Android", "Android", "IOS", None, None],
            "img_num": ["3"] * 5,
            "cate": [CATES[0]] * 5,
            "sub_cate": [None] * 5,
            "key_words": [None] * 5,
        }
    )
    planted["docs_dropped_bad_ctime"] = 5
    pd.concat([docs, bad], ignore_index=True).to_csv(raw_dir / "doc_info.txt", sep="\t",
                                                      index=False)  # fmt: skip
    with open(raw_dir / "doc_info.txt", "a", encoding="utf-8") as fh:
        fh.write("900009\t多了一列\t1624500000000\t1\t体育\t体育/1\tx:1\textra\n")
    planted["docs_malformed_lines"] = 1

    # exposures: per user and day, expos_per_day articles among those created in the last
    # three days, each shown after its creation; home-category articles clicked far more often
    n = n_users * DAYS * expos_per_day
    user = np.repeat(np.arange(n_users), DAYS * expos_per_day)
    day = np.tile(np.repeat(np.arange(DAYS), expos_per_day), n_users)
    # a random article of the day or the two before (article rows are grouped by day)
    pick_day = day - rng.integers(0, 3, n)
    art = (pick_day - first_day) * per_day + rng.integers(0, per_day, n)
    earliest = np.maximum(START + day * DAY, ctime_s[art] + 60)
    expo_s = earliest + (rng.random(n) * (START + (day + 1) * DAY - 1 - earliest)).astype(int)
    liked = cate_idx[art] == home[user]
    click = rng.random(n) < np.where(liked, 0.6, 0.02)
    duration = np.where(click, rng.exponential(np.where(liked, 120.0, 20.0)), 0).astype(int)
    log = pd.DataFrame(
        {
            "user_id": uid[user],
            "article_id": aid[art],
            "expo_time": expo_s * 1000 + rng.integers(0, 1000, n),
            "net_status": rng.choice([2, 5], n),
            "flush_nums": rng.integers(0, 10, n),
            "exop_position": rng.integers(1, 30, n),
            "click": click.astype(int),
            "duration": duration,
        }
    ).astype({"expo_time": str})
    # dirty rows, one reason each (the loader checks them in this order)
    t = START + 2 * DAY + 3600  # inside the window
    u0, a0 = uid[1], aid[(2 - first_day) * per_day - 5]  # an article of day 1
    dirty = [
        *[(u0, a0, "abc", 1)] * 2,                                   # unreadable expo_time
        *[(u0, a0, str((START - 3600) * 1000), 1)] * 5,              # before the window
        *[(u0, a0, str((START + DAYS * DAY + 60) * 1000), 1)] * 4,   # after the window
        *[(u0, "777777", str(t * 1000), 1)] * 7,                     # article not in doc_info
        *[(u0, "900001", str(t * 1000), 0)] * 3,                     # article dropped (ctime)
        *[(u0, aid[(6 - first_day) * per_day], str(t * 1000), 1)] * 6,  # before its ctime
        *[("555555", a0, str(t * 1000), 1)] * 3,                     # user not in user_info
    ]  # fmt: skip
    planted.update({"log_dropped_bad_expo_time": 2, "log_dropped_outside_window": 9,
                    "log_dropped_article_not_in_doc_info": 10, "log_dropped_before_ctime": 6,
                    "log_dropped_unknown_user": 3})  # fmt: skip
    extra = pd.DataFrame(dirty, columns=["user_id", "article_id", "expo_time", "click"])
    extra = extra.assign(net_status=2, flush_nums=0, exop_position=1, duration=30)
    log = pd.concat([log, extra[log.columns]], ignore_index=True)
    log.to_csv(raw_dir / "train_data_5w.csv", sep="\t")
    planted["log_rows"] = len(log)
    return planted


def write_realistic_news(raw_dir: Path, n_users: int = 1000, n_articles: int = 1333,
                         n_exposures: int = 55_000, seed: int = 0) -> dict[str, int]:  # fmt: skip
    """A news app as it really is (twotower_cli.tools.news_sim: hourly arrivals, lifetimes of a
    day or two, exposures picked by the app's recommender, clicks by hidden taste and
    quality, dirty rows): a third of issue 14's 3,000 / 4,000 / 165k log, same proportions;
    returns the dirty rows planted."""
    from twotower_cli.tools.news_sim import NewsShape, NewsSim

    return NewsSim(NewsShape(n_users, n_articles, n_exposures, seed=seed)).write(raw_dir)
