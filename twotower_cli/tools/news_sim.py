"""A simulated news app, written in the exact three-file format of `dataset=news`, with the
hidden truth kept aside so an oracle can be scored (tests, and measurements of issue 14).

The shape of a real news log: articles arrive every hour and live a day or two (the app's
attention to an article decays as exp(-age / 35 h); on the default log half of all clicks come
within 27 h of creation, 95% within 4.1 days); what a user is shown is picked by the app's own
recommender (part virality, part the user's taste, part freshness); a shown article is
clicked with a probability driven by the user's hidden taste for its category and sub-category
and the article's hidden quality (which its image count and title length reveal only a little);
dirty rows of every kind the loader drops are planted and counted.

    python -m twotower_cli.tools.news_sim DIR --users 3000 --articles 4000 --exposures 165000
    python -m twotower_cli.tools.news_sim DIR --oracle PREP_DIR   # after `twotower preprocess`

The oracle ranks each test user's test-day articles (those the app may show that day) by the
user's true click rate when shown, and is scored with evaluate's users, truth and masks.
`DIR/hidden_truth.npz` (not read by the loader) holds the parameters that rebuild the hidden
truth (the simulation is deterministic given them).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_cli.core.layout import FILES

DAY = 86_400
HOUR = 3600
DAYS = 7
# 2021-06-24 00:00:00 at UTC+8: the loader's default window and offset
START = int(pd.Timestamp("2021-06-24 00:00:00").timestamp()) - 8 * HOUR
END = START + DAYS * DAY
CATES = ["科技", "体育", "娱乐", "财经", "汽车", "健康", "国际", "社会", "军事", "教育", "旅游",
         "美食"]  # fmt: skip
SUBS_PER_CATE = 4
WORDS_PER_SUB = 6
TRUTH_FILE = FILES.news_truth


@dataclass
class NewsShape:
    """The simulated app's parameters (defaults: the shape issue 14 describes)."""

    n_users: int = 3000
    n_articles: int = 4000
    n_exposures: int = 165_000
    # attention to an article decays as exp(-age / lifetime_hours); never shown after max_age
    lifetime_hours: float = 35.0
    max_age_days: float = 6.0
    # articles are created from this many days before the window to its end
    lead_days: float = 5.0
    shown_per_session: int = 8
    # the app's recommender: weights of virality and of the user's taste in what it shows
    rec_virality: float = 1.0
    rec_taste: float = 1.0
    # clicks: base log-odds, weight of log taste (category, sub-category), weight of quality
    click_base: float = -3.3
    click_taste: float = 1.0
    click_quality: float = 0.8
    # Dirichlet concentration of user tastes over categories (small = a few favourites)
    taste_concentration: float = 0.3
    seed: int = 0


def _dist(rng: np.random.Generator, buckets: list[str], n: int) -> np.ndarray:
    """n distribution strings 'bucket:share,...' with shares rounded to 2 decimals."""
    w = rng.dirichlet(np.ones(len(buckets)), n).round(2)
    cells = np.char.add(np.char.add(np.array(buckets)[None, :], ":"), np.char.mod("%.2f", w))
    return np.array([",".join(row) for row in cells])


def _gumbel_top(scores: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m column indexes per row drawn without replacement with probability ~ exp(score)."""
    noisy = scores + rng.gumbel(size=scores.shape)
    return np.argpartition(-noisy, m - 1, axis=1)[:, :m]


class NewsSim:
    """One simulated app: users, articles, the exposure log and the hidden truth."""

    def __init__(self, shape: NewsShape) -> None:
        self.shape = s = shape
        rng = np.random.default_rng(s.seed)
        n_c = len(CATES)
        # users: taste over categories (a few favourites) and sub-categories; activity long-tailed
        self.taste = rng.dirichlet(np.full(n_c, s.taste_concentration), s.n_users) + 1e-3
        sub_taste = rng.dirichlet(np.ones(SUBS_PER_CATE), (s.n_users, n_c)).reshape(s.n_users, -1)
        self.sub_taste = sub_taste * SUBS_PER_CATE  # 1 = indifferent
        self.activity = rng.lognormal(0.0, 0.8, s.n_users)
        # gender leans towards some categories: user features carry a little taste
        self.gender_male = rng.random(s.n_users) < 0.5 + 0.4 * (
            self.taste[:, [1, 4, 8]].sum(1) - self.taste[:, [2, 5, 11]].sum(1)
        )
        # articles: hourly arrivals, category popularity skewed, hidden quality
        span = (s.lead_days + DAYS) * DAY
        self.ctime = np.sort(
            START - int(s.lead_days * DAY) + rng.integers(0, int(span), s.n_articles)
        )
        cate_p = 1.0 / np.arange(1, n_c + 1) ** 0.6
        self.cate = rng.choice(n_c, s.n_articles, p=cate_p / cate_p.sum())
        self.sub = self.cate * SUBS_PER_CATE + rng.integers(0, SUBS_PER_CATE, s.n_articles)
        self.quality = rng.normal(0.0, 1.0, s.n_articles)
        self.virality = self.quality + rng.normal(0.0, 1.0, s.n_articles)
        self.img_num = rng.poisson(np.exp(0.8 + 0.3 * self.quality).clip(max=20))
        self.title_len = (18 + 4 * self.quality + rng.normal(0, 6, s.n_articles)).clip(4, 60)
        self._simulate(rng)

    def _attention(self, age_s: np.ndarray) -> np.ndarray:
        """log of the app's attention to an article of this age (-inf before it exists)."""
        s = self.shape
        alive = (age_s >= 0) & (age_s < s.max_age_days * DAY)
        return np.where(alive, -age_s / (s.lifetime_hours * HOUR), -np.inf)

    def log_click_odds(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        """True click log-odds of shown articles, [len(users), len(articles)] (outer)."""
        s = self.shape
        taste = np.log(self.taste[users][:, self.cate[articles]] * len(CATES))
        sub = np.log(self.sub_taste[users][:, self.sub[articles]])
        return (
            s.click_base + s.click_taste * (taste + sub) + s.click_quality * self.quality[articles]
        )

    def rec_score(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        """The app recommender's score (before freshness), [len(users), len(articles)]."""
        s = self.shape
        taste = np.log(self.taste[users][:, self.cate[articles]] * len(CATES))
        return s.rec_virality * self.virality[articles] + s.rec_taste * taste

    def _simulate(self, rng: np.random.Generator) -> None:
        s = self.shape
        m = s.shown_per_session
        n_sessions = s.n_exposures // m
        # sessions: a user by activity, an hour with a daily rhythm (quiet at night)
        hour_w = 1.0 + 0.8 * np.sin((np.arange(24) - 6) / 24 * 2 * np.pi)
        hours = np.arange(DAYS * 24)
        h = rng.choice(hours, n_sessions, p=np.tile(hour_w, DAYS) / (hour_w.sum() * DAYS))
        user = rng.choice(s.n_users, n_sessions, p=self.activity / self.activity.sum())
        rows = []
        for hour in hours:  # one vectorised draw per hour: the articles alive then
            sess = np.flatnonzero(h == hour)
            if not len(sess):
                continue
            t = START + hour * HOUR + rng.integers(0, HOUR, len(sess))
            alive = np.flatnonzero(self._attention(START + hour * HOUR - self.ctime) > -np.inf)
            alive = alive[self.ctime[alive] < START + hour * HOUR]
            score = self.rec_score(user[sess], alive) + self._attention(
                START + hour * HOUR - self.ctime[alive]
            )
            picked = alive[_gumbel_top(score, min(m, len(alive)), rng)]
            u = np.repeat(user[sess], picked.shape[1])
            a = picked.ravel()
            t = np.maximum(np.repeat(t, picked.shape[1]), self.ctime[a] + 1)
            rows.append((u, a, t))
        u, a, t = (np.concatenate(x) for x in zip(*rows, strict=True))
        odds = self.log_click_odds_pairs(u, a)
        click = rng.random(len(u)) < 1.0 / (1.0 + np.exp(-odds))
        self.log = pd.DataFrame({"user": u, "article": a, "time": t, "click": click})

    def log_click_odds_pairs(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        """True click log-odds of (users[i], articles[i]) pairs."""
        s = self.shape
        taste = np.log(self.taste[users, self.cate[articles]] * len(CATES))
        sub = np.log(self.sub_taste[users, self.sub[articles]])
        return (
            s.click_base + s.click_taste * (taste + sub) + s.click_quality * self.quality[articles]
        )

    # -- the three files --------------------------------------------------------------------
    def write(self, raw_dir: Path) -> dict[str, int]:
        """Write the three files (dirty rows included) and the hidden truth; return the dirty
        rows planted, by the loader's manifest names."""
        s = self.shape
        rng = np.random.default_rng(s.seed + 1)
        raw_dir = Path(raw_dir)
        raw_dir.mkdir(parents=True, exist_ok=True)
        planted: dict[str, int] = {}
        uid = np.char.add("u", np.arange(100000, 100000 + s.n_users).astype(str))
        users = pd.DataFrame(
            {
                "user_id": uid,
                "device": rng.choice(
                    ["V2054A", "PACM00", "M2007J3SC", "SM-G9860", "iPhone12"], s.n_users
                ),  # fmt: skip
                "os": rng.choice(["Android", "IOS"], s.n_users, p=[0.8, 0.2]),
                "province": rng.choice(["广东", "山东", "河南", "四川", "江苏"], s.n_users),
                "city": rng.choice(["广州", "济南", "郑州", "成都", "南京", "深圳"], s.n_users),
                "age": _dist(rng, ["A_0_24", "A_25_29", "A_30_39", "A_40+"], s.n_users),
                "gender": np.where(
                    self.gender_male, "male:0.70,female:0.30", "female:0.70,male:0.30"
                ),  # fmt: skip
            }
        )
        holes = rng.choice(s.n_users, 4 * max(1, s.n_users // 100), replace=False).reshape(4, -1)
        for col, rows in zip(["province", "city", "device", "os"], holes, strict=True):
            users.loc[rows, col] = None
            planted[f"users_missing_{col}"] = len(rows)
        users = pd.concat([users, users.iloc[[1]]], ignore_index=True)
        planted["users_dropped_duplicate"] = 1
        users.to_csv(raw_dir / FILES.news_users, sep="\t")

        aid = np.arange(300000, 300000 + s.n_articles).astype(str)
        sub_names = np.array([f"{CATES[c // SUBS_PER_CATE]}/{c % SUBS_PER_CATE}"
                              for c in range(len(CATES) * SUBS_PER_CATE)])  # fmt: skip
        word = self.sub * WORDS_PER_SUB + rng.integers(0, WORDS_PER_SUB, (2, s.n_articles))
        w = rng.random((2, s.n_articles)).round(3)
        docs = pd.DataFrame(
            {
                "article_id": aid,
                "title": ["新" * int(n) for n in self.title_len],
                "ctime": (self.ctime * 1000 + rng.integers(0, 1000, s.n_articles)).astype(str),
                "img_num": self.img_num.astype(str),
                "cate": np.array(CATES)[self.cate],
                "sub_cate": sub_names[self.sub],
                "key_words": [
                    f"词{a}:{x},词{b}:{y}" for a, b, x, y in zip(*word, *w, strict=True)
                ],  # fmt: skip
            }
        )
        dirty = rng.choice(s.n_articles, 12, replace=False)
        docs.loc[dirty[:4], "img_num"] = "abc"
        planted["docs_img_num_not_a_number"] = 4
        docs.loc[dirty[4:8], "cate"] = None
        planted["docs_missing_cate"] = 4
        docs.loc[dirty[8:], "title"] = None
        bad = pd.DataFrame({"article_id": ["900001", "900002", "900003"], "title": ["坏行"] * 3,
                            "ctime": ["Android", "IOS", None], "img_num": ["1"] * 3,
                            "cate": [CATES[0]] * 3, "sub_cate": [None] * 3,
                            "key_words": [None] * 3})  # fmt: skip
        planted["docs_dropped_bad_ctime"] = 3
        pd.concat([docs, bad], ignore_index=True).to_csv(raw_dir / FILES.news_docs, sep="\t",
                                                          index=False)  # fmt: skip
        with open(raw_dir / FILES.news_docs, "a", encoding="utf-8") as fh:
            fh.write("900009\t多了一列\t1624500000000\t1\t体育\t体育/1\tx:1\textra\n")
        planted["docs_malformed_lines"] = 1

        log = self.log
        n = len(log)
        dur = np.where(log["click"], rng.exponential(60.0, n), 0).astype(int)
        out = pd.DataFrame(
            {
                "user_id": uid[log["user"]],
                "article_id": aid[log["article"]],
                "expo_time": (log["time"] * 1000 + rng.integers(0, 1000, n)).astype(str),
                "net_status": rng.choice([2, 5], n),
                "flush_nums": rng.integers(0, 10, n),
                "exop_position": rng.integers(1, 30, n),
                "click": log["click"].astype(int),
                "duration": dur,
            }
        )
        t = str((START + 2 * DAY + HOUR) * 1000)
        a_day2 = aid[np.searchsorted(self.ctime, START + DAY)]
        a_day6 = aid[np.searchsorted(self.ctime, START + 6 * DAY)]
        rows = [
            *[(uid[0], a_day2, "abc")] * 2,                           # unreadable expo_time
            *[(uid[0], a_day2, str((START - HOUR) * 1000))] * 3,      # before the window
            *[(uid[0], a_day2, str((END + 60) * 1000))] * 2,          # after the window
            *[(uid[0], "777777", t)] * 4,                             # not in doc_info
            *[(uid[0], "900001", t)] * 1,                             # its article was dropped
            *[(uid[0], a_day6, t)] * 3,                               # before the ctime
            *[("u555555", a_day2, t)] * 2,                            # unknown user
        ]  # fmt: skip
        planted.update({"log_dropped_bad_expo_time": 2, "log_dropped_outside_window": 5,
                        "log_dropped_article_not_in_doc_info": 5, "log_dropped_before_ctime": 3,
                        "log_dropped_unknown_user": 2})  # fmt: skip
        extra = pd.DataFrame(rows, columns=["user_id", "article_id", "expo_time"]).assign(
            net_status=2, flush_nums=0, exop_position=1, click=1, duration=30
        )
        out = pd.concat([out, extra[out.columns]], ignore_index=True)
        out.to_csv(raw_dir / FILES.news_log, sep="\t")
        planted["log_rows"] = len(out)
        np.savez(raw_dir / TRUTH_FILE, shape=json.dumps(vars(s)))
        return planted

    # -- summaries ----------------------------------------------------------------------------
    def click_ages(self) -> np.ndarray:
        """Age (seconds) of every clicked article at its click."""
        clicks = self.log[self.log["click"]]
        return clicks["time"].to_numpy() - self.ctime[clicks["article"].to_numpy()]


def oracle_ranking(sim: NewsSim, prep_dir: Path, ev, depth: int, test_start: int) -> np.ndarray:
    """[len(ev.users), depth] encoded item ids: each test user's test-day articles (those the
    app may show during the test day, in the encoded catalogue) by the user's true click rate
    when shown, best first; other articles after them."""
    vocabs = json.loads((Path(prep_dir) / FILES.vocabs).read_text())
    user_raw = np.array(vocabs["user"]["user"], dtype=object)[ev.users - 1]
    users = np.array([int(u[1:]) - 100000 for u in user_raw])
    arts = np.array(vocabs["item"]["item"], dtype=object).astype(np.int64) - 300000
    hours = np.arange(test_start, END, HOUR)[:, None]
    alive = (sim._attention(hours - sim.ctime[arts][None, :]) > -np.inf).any(0)
    rate = 1.0 / (1.0 + np.exp(-sim.log_click_odds(users, arts)))
    order = np.argsort(-np.where(alive[None, :], rate, -1.0), axis=1, kind="stable")
    return order[:, :depth] + 1


def oracle_metrics(raw_dir: Path, prep_dir: Path, ks: list[int]) -> dict:
    """The oracle's metrics on a preprocessed simulated log, with evaluate's users, truth and
    masks (every test click counts, in or out of any pool)."""
    from twotower_cli.artifacts.store import read_manifest, read_split, seen_rows
    from twotower_cli.retrieval.search import EvalSet, evaluate_ranked

    shape = NewsShape(**json.loads(str(np.load(Path(raw_dir) / TRUTH_FILE)["shape"])))
    sim = NewsSim(shape)
    n_items = read_manifest(prep_dir)["figures"]["n_items"]
    ev = EvalSet.build(read_split(prep_dir, "test"), seen_rows(prep_dir), n_items)
    depth = min(n_items, max(ks) + ev.max_exclude)
    test_start = END - DAY
    return evaluate_ranked(oracle_ranking(sim, prep_dir, ev, depth, test_start), ev, ks, n_items)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--articles", type=int, default=4000)
    parser.add_argument("--exposures", type=int, default=165_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", type=Path, help="a preprocess dir: print the oracle's metrics")
    args = parser.parse_args(argv)
    if args.oracle:
        print(json.dumps(oracle_metrics(args.raw_dir, args.oracle, [10, 20, 50]), indent=1))
        return
    sim = NewsSim(NewsShape(args.users, args.articles, args.exposures, seed=args.seed))
    planted = sim.write(args.raw_dir)
    ages = sim.click_ages() / HOUR
    print(json.dumps({"exposures": len(sim.log), "clicks": int(sim.log["click"].sum()),
                      "click_age_hours_p50": float(np.quantile(ages, 0.5)),
                      "click_age_hours_p95": float(np.quantile(ages, 0.95)),
                      "dirty_rows": planted}))  # fmt: skip


if __name__ == "__main__":
    main()
