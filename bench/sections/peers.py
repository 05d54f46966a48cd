"""Peers side by side (`make bench`, section `peers`: `section`): torch-rechub's DSSM (the
optional `bench` extra, `pip install -e '.[bench]'`) against twotower's default on the same
MovieLens-100K split
(`twotower preprocess`'s tables), scored with twotower's metric code on the same test users and
masks; the speed keys come from rounds that alternate the two sides.

rechub runs as its own example (`examples/matching/run_ml_dssm.py`) sets it up: 16-dim
embeddings of user id, gender, age, occupation, zip and the mean of the user's last 50 items
(shared with the item id table); item id and first genre; towers [256, 128, 64] with PReLU;
point-wise BCE with 3 negatives per positive drawn by count^0.75 (its `negative_sample`,
method 1); Adam with weight decay 1e-6; batch 4096; its `MatchTrainer` and
`MatchDataGenerator`. Its learning rate and epoch count are picked on the validation split:
each rate trains until `patience` epochs bring no better validation Recall@20 (at most
`epochs`, twotower's own limit; the example's fixed 10 epochs left its best run still rising),
and the grid widens by half-decades past whichever end holds the best
(`next_lr`). The adapter below builds rechub's inputs from twotower's tables (vectorised;
rechub's own `generate_seq_feature_match` makes its own leave-one-out split, not this one).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.timer import alternate, median
from twotower_cli.artifacts.store import read_split
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.layout import FILES, Layout
from twotower_cli.retrieval.search import EvalSet, build_index, evaluate_index

HIST_LEN = 50
# rechub epochs per speed round (~10 s on one thread, about one `twotower train`)
PEER_EPOCHS = 2
USER_COLS = ("user", "gender", "age", "occupation", "zip")


@dataclass
class RechubSettings:
    """rechub's ML example settings; `lrs` is the starting validation grid (its default 1e-4
    first), widened within `lr_range` while an end of it is best; per rate, early stopping
    after `patience` epochs without a better validation recall, `epochs` at most (twotower's
    train.epochs)."""

    embed_dim: int = 16
    dims: list = field(default_factory=lambda: [256, 128, 64])
    neg_ratio: int = 3
    batch_size: int = 4096
    epochs: int = 40
    # twotower's patience is 4, but rechub's validation recall jumps by +-0.02 between its
    # epochs of 35 steps (batch 4096), and 4 stopped its 1e-3 run at 0.054 where 10 fixed
    # epochs had reached 0.084: 10 lets the noise pass
    patience: int = 10
    weight_decay: float = 1e-6
    lrs: list = field(default_factory=lambda: [1e-4, 1e-3, 1e-2])
    lr_range: tuple = (1e-5, 1.0)
    seed: int = 2022


def last_items(rows: pd.DataFrame, n: int = HIST_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Each row's user's previous items (strictly earlier rows of the same user, in (timestamp,
    item) order), at most n, left-padded with 0: the history rechub's SequenceFeature pools.
    Returns (history [len(rows), n], order) with rows taken in `order`."""
    order = np.lexsort((rows["item"].to_numpy(), rows["timestamp"].to_numpy(),
                        rows["user"].to_numpy()))  # fmt: skip
    users, items = rows["user"].to_numpy()[order], rows["item"].to_numpy()[order]
    pos = np.arange(len(users))
    start = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(users)]))
    hist = np.zeros((len(users), n), dtype=np.int64)
    for back in range(1, n + 1):
        prev = pos - back
        ok = prev >= first
        hist[ok, n - back] = items[prev[ok]]
    return hist, order


def query_history(seen: pd.DataFrame, users: np.ndarray, n: int = HIST_LEN) -> np.ndarray:
    """The last n items of each user in `users` among `seen` (0-padded on the left)."""
    tail = pd.concat([seen, pd.DataFrame({"user": users, "item": 0,
                                          "timestamp": np.iinfo(np.int64).max})])  # fmt: skip
    hist, order = last_items(tail, n)
    is_query = tail["item"].to_numpy()[order] == 0
    got_users = tail["user"].to_numpy()[order][is_query]
    return hist[is_query][np.searchsorted(got_users, users)]


class RechubAdapter:
    """twotower's preprocessed tables -> rechub's feature lists, input dicts and model."""

    def __init__(self, prep_dir: Path, settings: RechubSettings) -> None:
        self.prep_dir, self.s = Path(prep_dir), settings
        schema = json.loads((self.prep_dir / FILES.schema).read_text())
        self.vocab = {f["name"]: f["vocab_size"] for side in schema.values() for f in side}
        missing = [c for c in (*USER_COLS, "item", "genres") if c not in self.vocab]
        if missing:
            raise TwoTowerError(f"{self.prep_dir / FILES.schema}: no feature {missing[0]!r}; "
                                "peers needs `twotower preprocess` of dataset=ml100k")  # fmt: skip
        self.users = pd.read_parquet(self.prep_dir / FILES.users).set_index("user")
        items = pd.read_parquet(self.prep_dir / FILES.items).sort_values("item")
        self.n_items = int(items["item"].max())
        # rechub's example: the item's first genre ("cate_id")
        self.cate = np.zeros(self.n_items + 1, dtype=np.int64)
        self.cate[items["item"].to_numpy()] = np.stack(items["genres"].to_numpy())[:, 0]
        self.train = read_split(self.prep_dir, "train")
        self.valid = read_split(self.prep_dir, "valid")
        self.test = read_split(self.prep_dir, "test")

    def features(self):
        from torch_rechub.basic.features import SequenceFeature, SparseFeature

        d = self.s.embed_dim
        user = [SparseFeature(c, vocab_size=self.vocab[c], embed_dim=d) for c in USER_COLS]
        user.append(SequenceFeature("hist", vocab_size=self.vocab["item"], embed_dim=d,
                                    pooling="mean", shared_with="item"))  # fmt: skip
        item = [SparseFeature("item", vocab_size=self.vocab["item"], embed_dim=d),
                SparseFeature("cate", vocab_size=self.vocab["genres"], embed_dim=d)]  # fmt: skip
        return user, item

    def model(self):
        from torch_rechub.models.matching import DSSM as RechubDSSM

        user, item = self.features()
        tower = {"dims": list(self.s.dims), "activation": "prelu"}
        return RechubDSSM(user, item, temperature=0.02, user_params=tower,
                          item_params=dict(tower))  # fmt: skip

    def user_inputs(self, users: np.ndarray, hist: np.ndarray) -> dict[str, np.ndarray]:
        table = self.users.loc[users]
        out = {c: table[c].to_numpy(np.int64) for c in USER_COLS if c != "user"}
        return {"user": np.asarray(users, np.int64), **out, "hist": hist}

    def item_inputs(self, items: np.ndarray) -> dict[str, np.ndarray]:
        return {"item": np.asarray(items, np.int64), "cate": self.cate[items]}

    def train_inputs(self, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every training positive (with its history before it) plus neg_ratio negatives
        sharing its user features, drawn with rechub's `negative_sample` (count^0.75)."""
        from torch_rechub.utils.match import negative_sample

        hist, order = last_items(self.train)
        users = self.train["user"].to_numpy()[order]
        items = self.train["item"].to_numpy()[order]
        counts = pd.Series(items).value_counts()
        np.random.seed(seed)  # negative_sample draws from numpy's global generator
        r = self.s.neg_ratio
        neg = np.asarray(negative_sample(counts.to_dict(), len(items) * r, method_id=1))
        rows = np.r_[np.arange(len(items)), np.repeat(np.arange(len(items)), r)]
        x = self.user_inputs(users[rows], hist[rows])
        x.update(self.item_inputs(np.r_[items, neg]))
        y = np.r_[np.ones(len(items)), np.zeros(len(items) * r)].astype(np.float32)
        return x, y


def encode(model, x: dict[str, np.ndarray], mode: str, batch: int = 8192) -> np.ndarray:
    """rechub's tower `mode` ("user"/"item") over the rows of x, in batches, no DataLoader."""
    model.eval()
    model.mode = mode
    n = len(next(iter(x.values())))
    out = []
    with torch.no_grad():
        for s in range(0, n, batch):
            out.append(model({k: torch.from_numpy(v[s : s + batch].copy()) for k, v in x.items()}))
    model.mode = None
    return torch.cat(out).numpy().astype(np.float32)


def recall(model, ad: RechubAdapter, held: pd.DataFrame, seen: pd.DataFrame,
           ks: list[int]) -> dict:  # fmt: skip
    """twotower's evaluate_index on rechub's vectors: held-out positives, `seen` masked, the
    user's history = the last 50 of `seen`."""
    ev = EvalSet.build(held, seen, ad.n_items)
    items = encode(model, ad.item_inputs(np.arange(1, ad.n_items + 1)), "item")
    u = encode(model, ad.user_inputs(ev.users, query_history(seen, ev.users)), "user")
    return evaluate_index(build_index(items, "Flat"), u, ev, ks, ad.n_items)


def next_lr(best_valid: dict[float, float], lr_range: tuple[float, float]) -> float | None:
    """The next rate to try: half a decade past the grid's end when that end holds the best
    validation recall (the top end first), inside lr_range; None when the best is inside the
    grid (or at a bound of the range)."""
    best = max(best_valid, key=best_valid.get)
    lo, hi = min(best_valid), max(best_valid)
    step = 10**0.5
    if best == hi and hi * step <= lr_range[1] * (1 + 1e-9):
        return hi * step
    if best == lo and lo / step >= lr_range[0] * (1 - 1e-9):
        return lo / step
    return None


def prepare(prep_dir: Path, settings: RechubSettings) -> tuple[RechubAdapter, dict, np.ndarray]:
    """The adapter and rechub's training inputs (positives and their drawn negatives)."""
    ad = RechubAdapter(prep_dir, settings)
    x, y = ad.train_inputs(settings.seed)
    return ad, x, y


def trainer_and_loader(ad: RechubAdapter, x: dict, y: np.ndarray, settings: RechubSettings,
                       lr: float):  # fmt: skip
    """A fresh rechub DSSM (seeded), its MatchTrainer at `lr` and its training DataLoader."""
    from torch_rechub.trainers import MatchTrainer
    from torch_rechub.utils.data import MatchDataGenerator

    torch.manual_seed(settings.seed)
    model = ad.model()
    trainer = MatchTrainer(model, mode=0, n_epoch=settings.epochs, device="cpu",
                           optimizer_params={"lr": lr, "weight_decay": settings.weight_decay},
                           model_path=str(ad.prep_dir))  # fmt: skip
    # num_workers=0: the loader shares this process's threads, as twotower's data path does
    loader = MatchDataGenerator(x=x, y=y).generate_dataloader(
        ad.item_inputs(np.arange(1, 2)), ad.item_inputs(np.arange(1, 2)),
        batch_size=settings.batch_size, num_workers=0)[0]  # fmt: skip
    return model, trainer, loader


def rates(ad: RechubAdapter, x: dict, y: np.ndarray, settings: RechubSettings, lr: float,
          epochs: int) -> list[float]:  # fmt: skip
    """Training positives/s of each of `epochs` epochs of a fresh model at `lr` (the speed
    rounds, which alternate with twotower's)."""
    _, trainer, loader = trainer_and_loader(ad, x, y, settings, lr)
    epoch_s = alternate(epochs, {"epoch": lambda r: trainer.train_one_epoch(loader)}).seconds
    return [float(y.sum()) / s for s in epoch_s["epoch"]]


def run_rechub(prep_dir: Path, settings: RechubSettings, k: int = 20, log=print) -> dict:
    """The validation search: each learning rate trains with early stopping on validation
    Recall@k (rechub's MatchTrainer), the grid widening past a best end (`next_lr`); the
    (lr, epoch) with the best validation recall is scored on the test split. Positives/s counts
    training positives over the training loop's seconds only (here: every epoch of the
    search; the speed keys come from the alternating rounds of `section`)."""
    start = time.perf_counter()
    ad, x, y = prepare(prep_dir, settings)
    n_pos = int(y.sum())
    prep_s = time.perf_counter() - start
    best = {"valid": -1.0}
    speeds, runs, queue = [], {}, sorted(settings.lrs)
    while queue:
        lr = queue.pop(0)
        model, trainer, loader = trainer_and_loader(ad, x, y, settings, lr)
        curve, train_s = [], 0.0
        for epoch in range(settings.epochs):
            t0 = time.perf_counter()
            trainer.train_one_epoch(loader)
            seconds = time.perf_counter() - t0
            train_s += seconds
            speeds.append(n_pos / seconds)
            value = recall(model, ad, ad.valid, ad.train, [k])[f"recall@{k}"]
            curve.append(value)
            log(f"peers: rechub lr {lr:g} epoch {epoch + 1}: valid recall@{k} {value:.4f}, "
                f"{n_pos / seconds:.0f} positives/s")  # fmt: skip
            if value > best["valid"]:
                best = {"valid": value, "lr": lr, "epoch": epoch + 1, "train_s": train_s,
                        "state": copy.deepcopy(model.state_dict())}  # fmt: skip
            if epoch + 1 - int(np.argmax(curve)) - 1 >= settings.patience:
                break
        runs[lr] = {"valid_curve": curve, "train_s": train_s}
        if not queue:
            more = next_lr({r: max(v["valid_curve"]) for r, v in runs.items()}, settings.lr_range)
            queue = [more] if more is not None else []
    model = ad.model()
    model.load_state_dict(best["state"])
    seen = pd.concat([ad.train, ad.valid])
    test = recall(model, ad, ad.test, seen, [10, k, 50])
    out = {}
    for lr, r in runs.items():
        out[f"peers/rechub/lr={lr:.3g}/best_valid_recall@{k}"] = max(r["valid_curve"])
        out[f"peers/rechub/lr={lr:.3g}/best_epoch"] = int(np.argmax(r["valid_curve"])) + 1
        out[f"peers/rechub/lr={lr:.3g}/epochs_run"] = len(r["valid_curve"])
    return {**out, "peer_rechub_recall@20": test[f"recall@{k}"],
            "peer_rechub_recall@10": test["recall@10"],
            "peer_rechub_recall@50": test["recall@50"],
            "peer_rechub_valid_recall@20": best["valid"], "peer_rechub_lr": best["lr"],
            "peer_rechub_epochs": best["epoch"], "peer_rechub_lrs_tried": sorted(runs),
            "peer_rechub_samples_per_s": float(np.median(speeds)),
            "peer_rechub_train_s": best["train_s"],
            "peer_rechub_input_s": prep_s, "peer_rechub_wall_s": time.perf_counter() - start,
            "peer_rechub_train_rows": len(y), "peer_rechub_train_positives": n_pos}  # fmt: skip


def section(out_dir: Path, threads: int, repeats: int, log=print) -> dict:
    """twotower's default `twotower run` on MovieLens-100K (a subprocess, its own paths.out),
    then torch-rechub's DSSM on the tables that run's preprocess wrote (this module), both
    on `threads` threads: test Recall@20 and wall seconds from those runs. The speed keys come
    from `repeats` rounds that alternate the sides (twotower rechub, then rechub twotower, ...)
    so that machine load hits both alike: twotower's `twotower train` again (its manifest's
    training positives/s), rechub's `train_one_epoch` for PEER_EPOCHS epochs of a fresh model at
    its chosen rate; medians of the rounds."""
    try:
        import torch_rechub  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            "bench: section peers needs torch-rechub: pip install -e '.[bench]'"
        ) from err
    run_out = out_dir / "peers"
    script = str(Path(sys.executable).with_name("twotower"))
    base = [f"paths.out={run_out}", f"threads={threads}"]
    log(f"peers: twotower run {' '.join(base)}")
    start = time.perf_counter()
    subprocess.run([script, "run", *base], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    L = Layout.named(run_out, "ml100k", "inbatch", "dssm")
    train = json.loads((L.train / FILES.manifest).read_text())
    metrics = json.loads((L.evaluate / FILES.manifest).read_text())["figures"]
    ours = {"peer_twotower_run_samples_per_s": train["figures"]["samples_per_s"],
            "peer_twotower_train_s": train["seconds"], "peer_twotower_wall_s": wall,
            "peer_twotower_recall@20": metrics["model/recall@20"],
            "peer_twotower_epochs": train["figures"]["epochs"]}  # fmt: skip
    settings = RechubSettings()
    prep_dir = L.preprocess
    theirs = run_rechub(prep_dir, settings, log=log)
    theirs["peer_rechub_search_samples_per_s"] = theirs.pop("peer_rechub_samples_per_s")
    ad, x, y = prepare(prep_dir, settings)
    speed_manifest = Layout.named(run_out, "ml100k", "inbatch", "speed").train / FILES.manifest

    def ours_speed(r: int) -> float:  # a run of its own (paths.run), beside the scored one
        log(f"peers: speed round {r + 1}/{repeats}: twotower")
        subprocess.run([script, "train", *base, "paths.run=speed"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        return json.loads(speed_manifest.read_text())["figures"]["samples_per_s"]

    def rechub_speed(r: int) -> float:
        log(f"peers: speed round {r + 1}/{repeats}: rechub")
        return median(rates(ad, x, y, settings, theirs["peer_rechub_lr"], PEER_EPOCHS))

    # the rates are the sides' own (manifest, epochs), not the timer's seconds
    speed = alternate(repeats, {"twotower": ours_speed, "rechub": rechub_speed}).results
    ours["peer_twotower_samples_per_s"] = median(speed["twotower"])
    theirs["peer_rechub_samples_per_s"] = median(speed["rechub"])
    rounds = {"peer_speed_rounds": repeats, "peers/speed/twotower": speed["twotower"],
              "peers/speed/rechub": speed["rechub"]}  # fmt: skip
    return {**ours, **theirs, **combine(theirs, ours), **rounds, "peer_threads": threads}


def combine(rechub: dict, twotower: dict) -> dict:
    """The two ratios of the peers section (twotower over rechub)."""
    return {"peer_speedup": twotower["peer_twotower_samples_per_s"]
            / rechub["peer_rechub_samples_per_s"],
            "peer_recall_ratio": twotower["peer_twotower_recall@20"]
            / max(rechub["peer_rechub_recall@20"], 1e-12)}  # fmt: skip
