"""Negative samplers: drawn distributions, exclusions, seeds, logQ columns, streaming estimate,
and every sampler end to end on the small generated data set."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import options
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.core.errors import TwoTowerError
from twotower_cli.core.keys import pair_keys
from twotower_cli.samplers import (
    LOGQ_MODES,
    CatalogueSampler,
    HardNegativeSampler,
    InBatchSampler,
    MixedSampler,
    PopularitySampler,
    RandomNegativeSampler,
    Sampler,
    popularity_probs,
)
from twotower_cli.samplers.mining import mined_band
from twotower_cli.training.losses import LOSSES, StreamingFrequency

N_ITEMS = 40


def make_train(seed: int = 0, n_users: int = 30, per_user: int = 12) -> pd.DataFrame:
    """Zipf-like positives: popular items are liked by many users (distinct pairs)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, N_ITEMS + 1)
    rows = [
        (u, i)
        for u in range(1, n_users + 1)
        for i in rng.choice(N_ITEMS, per_user, replace=False, p=p / p.sum()) + 1
    ]
    return pd.DataFrame(rows, columns=["user", "item"])


def expected_frequencies(train: pd.DataFrame, probs: np.ndarray, n_neg: int) -> np.ndarray:
    """Expected draws of each item: a user's positives are redrawn, so the user's draws follow
    probs restricted to the other items and renormalised."""
    out = np.zeros(N_ITEMS)
    for _, items in train.groupby("user")["item"]:
        allowed = np.ones(N_ITEMS, bool)
        allowed[items.to_numpy() - 1] = False
        q = probs * allowed
        out += len(items) * n_neg * q / q.sum()
    return out


def test_popularity_probs_hand_worked():
    # power, alpha 0.5: max(count, 1)^0.5 of counts [4, 1, 0] = [2, 1, 1] -> / 4
    assert popularity_probs(np.array([4, 1, 0]), "power", 0.5) == pytest.approx([0.5, 0.25, 0.25])
    # rank, alpha 1: counts [1, 9, 4] rank [3, 1, 2]; weights [1/3, 1, 1/2] sum 11/6
    rank = popularity_probs(np.array([1, 9, 4]), "rank", 1.0)
    assert rank == pytest.approx([2 / 11, 6 / 11, 3 / 11])


@pytest.mark.parametrize("mode", ["power", "rank"])
def test_popularity_draws_match_the_intended_distribution(mode: str):
    train = make_train()
    s = PopularitySampler(n_neg=300, mode=mode, alpha=0.75, seed=1).fit(train, N_ITEMS)
    counts = np.bincount(s.negatives().ravel(), minlength=N_ITEMS + 1)[1:]
    expected = expected_frequencies(train, s.item_probs_, 300)
    # 108,000 draws; an item every user likes is never drawn; each other item expects > 900
    # draws, so 3 sigma is under 10%
    never = expected == 0
    assert counts[never].sum() == 0
    assert expected[~never].min() > 900
    assert np.abs(counts[~never] / expected[~never] - 1).max() < 0.1


class _Fitting:
    """A sampler whose `fit` is handed the mined band when it needs one (as the sample stage
    does)."""

    def __init__(self, sampler, source: Path, band: tuple[int, int]) -> None:
        self.sampler, self.source, self.band = sampler, source, band

    def fit(self, train, n_items, items=None):
        extra = {}
        if self.sampler.needs_band:
            extra["band_items"] = mined_band(str(self.source), None, n_items, self.band)
        return self.sampler.fit(train, n_items, items, **extra)


def _all_explicit(train: pd.DataFrame, items: pd.DataFrame, source: Path, seed: int = 0):
    samplers = [
        RandomNegativeSampler(n_neg=8, seed=seed),
        PopularitySampler(n_neg=8, mode="power", seed=seed),
        PopularitySampler(n_neg=8, mode="rank", seed=seed),
        HardNegativeSampler(n_neg=8, kind="rule", hard_ratio=0.75, seed=seed),
        HardNegativeSampler(n_neg=8, kind="mined", seed=seed),
    ]
    return [_Fitting(s, source, (3, 20)) for s in samplers]


def item_table() -> pd.DataFrame:
    """Items 1..40 in 5 genres (multihot, two slots; item i has genre i % 5 + 1 and, for even
    i, also genre 6)."""
    ids = np.arange(1, N_ITEMS + 1)
    genres = [[i % 5 + 1, 6 if i % 2 == 0 else 0] for i in ids]
    return pd.DataFrame({"item": ids, "genres": genres})


def fake_embeddings(tmp_path: Path, n_users: int = 30) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "item_vectors.npy", rng.normal(size=(N_ITEMS, 8)).astype(np.float32))
    np.save(tmp_path / "user_vectors.npy", rng.normal(size=(n_users, 8)).astype(np.float32))
    np.save(tmp_path / "user_ids.npy", np.arange(1, n_users + 1))
    return tmp_path


def test_no_users_positive_is_ever_its_negative(tmp_path: Path):
    # 12 of 40 items liked per user (popular ones most): plenty of collisions to redraw
    train = make_train(per_user=12)
    known = set(pair_keys(train["user"].to_numpy(), train["item"].to_numpy(), N_ITEMS))
    for s in _all_explicit(train, item_table(), fake_embeddings(tmp_path)):
        neg = s.fit(train, N_ITEMS, item_table()).negatives()
        assert neg.shape == (len(train), 8)
        assert neg.min() >= 1 and neg.max() <= N_ITEMS
        users = np.repeat(train["user"].to_numpy(), 8)
        drawn = pair_keys(users, neg.ravel(), N_ITEMS)
        assert not known & set(drawn), type(s).__name__


def test_same_seed_same_samples_other_seed_other_samples(tmp_path: Path):
    train, items, src = make_train(), item_table(), fake_embeddings(tmp_path)
    a = [s.fit(train, N_ITEMS, items).negatives() for s in _all_explicit(train, items, src, 3)]
    b = [s.fit(train, N_ITEMS, items).negatives() for s in _all_explicit(train, items, src, 3)]
    c = [s.fit(train, N_ITEMS, items).negatives() for s in _all_explicit(train, items, src, 4)]
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x, y)
        assert not np.array_equal(x, z)


def test_rule_hard_negatives_share_a_genre_with_their_positive():
    train = make_train()
    s = HardNegativeSampler(n_neg=4, kind="rule", hard_ratio=0.5, seed=0)
    neg = s.fit(train, N_ITEMS, item_table()).negatives()
    genres = np.array([[0, 0], *item_table()["genres"]])
    pos = train["item"].to_numpy()

    def share(items: np.ndarray) -> np.ndarray:
        g_pos, g_neg = genres[pos], genres[items]
        match = (g_pos[:, :, None] == g_neg[:, None, :]) & (g_pos[:, :, None] > 0)
        return match.any((1, 2))

    # 2 hard slots: nearly all share (a few fall back to uniform after repeated hits on the
    # user's positives); uniform slots share by chance only (genre 6 covers half the items)
    hard = np.mean([share(neg[:, j]) for j in range(2)])
    easy = np.mean([share(neg[:, j]) for j in range(2, 4)])
    assert hard > 0.95
    assert easy < 0.8


def test_mined_hard_negatives_come_from_the_users_band(tmp_path: Path):
    src = fake_embeddings(tmp_path)
    train = make_train()
    band = mined_band(str(src), None, N_ITEMS, (3, 10))
    s = HardNegativeSampler(n_neg=2, kind="mined", hard_ratio=0.5, seed=0)
    s.fit(train, N_ITEMS, band_items=band)
    scores = np.load(src / "user_vectors.npy") @ np.load(src / "item_vectors.npy").T
    order = np.argsort(-scores, axis=1) + 1  # item ids by score, per user (row = user - 1)
    band = order[:, 2:10]
    users = train["user"].to_numpy()
    hard = s.negatives()[:, 0]
    assert all(h in band[u - 1] for u, h in zip(users, hard, strict=True))


def test_mined_without_the_earlier_run_says_which_command_to_run(tmp_path: Path):
    with pytest.raises(TwoTowerError) as err:
        mined_band(str(tmp_path / "nope"), "inbatch/dssm", N_ITEMS, (101, 500))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nope") in msg
    assert "run `twotower run sampler=inbatch paths.run=dssm` first" in msg


def test_bad_parameters_fail_with_the_key_named():
    with pytest.raises(TwoTowerError, match="sampler.logq"):
        InBatchSampler(logq="approx")
    with pytest.raises(TwoTowerError, match="sampler.mode"):
        PopularitySampler(mode="zipf")
    with pytest.raises(TwoTowerError, match="sampler.kind"):
        HardNegativeSampler(kind="genre")
    with pytest.raises(TwoTowerError, match="sampler.attribute: 'colour'"):
        HardNegativeSampler(attribute="colour").fit(make_train(), N_ITEMS, item_table())


def test_inbatch_exact_logq_of_a_hand_worked_batch():
    # items liked [1, 1, 1, 2] of 3; unseen item 3 counts half: counts [3, 1, 0.5] / 4.5
    # -> Q = [2/3, 2/9, 1/9]
    train = pd.DataFrame({"user": [1, 2, 3, 1], "item": [1, 1, 1, 2]})
    s = InBatchSampler(logq="exact").fit(train, 3)
    assert np.exp(s.item_log_q_[1:]) == pytest.approx([2 / 3, 2 / 9, 1 / 9])
    fn = s.batch_fn(torch.from_numpy(s.item_log_q_))
    batch = fn({"item": torch.tensor([1, 2])})
    # expected count in a batch of B = 2: 2 * 2/3 = 4/3 and 2 * 2/9 = 4/9
    assert batch["log_q"].tolist() == pytest.approx([np.log(4 / 3), np.log(4 / 9)], rel=1e-5)
    assert InBatchSampler(logq="off").fit(train, 3).batch_fn(torch.zeros(4)) is None


def test_mixed_logq_is_the_mixture_expected_count():
    train = pd.DataFrame({"user": [1, 2, 3, 1], "item": [1, 1, 1, 2]})
    s = MixedSampler(n_uniform=6, logq="exact").fit(train, 3)
    batch = s.batch_fn(torch.from_numpy(s.item_log_q_), seed=0)({"item": torch.tensor([1, 2])})
    assert batch["neg"].shape == (6,) and batch["neg"].min() >= 1 and batch["neg"].max() <= 3
    # Q = [2/3, 2/9, 1/9] (as above), B = 2, 6 uniform draws of 3 items: 2 each
    # item 1: 2 * 2/3 + 2 = 10/3; item 2: 2 * 2/9 + 2 = 22/9; item 3: 2 * 1/9 + 2 = 20/9
    assert batch["log_q"].tolist() == pytest.approx([np.log(10 / 3), np.log(22 / 9)], rel=1e-5)
    expect = {1: np.log(10 / 3), 2: np.log(22 / 9), 3: np.log(20 / 9)}
    got = batch["neg_log_q"].tolist()
    assert got == pytest.approx([expect[i] for i in batch["neg"].tolist()], rel=1e-5)


def test_inbatch_with_n_uniform_draws_what_mixed_draws():
    # sampler.n_uniform on the in-batch sampler (conf/tuned/sampler/ml100k_inbatch.yaml) is the
    # mixed sampler: the same uniform items and corrections for the same seed; 0 adds none
    train = pd.DataFrame({"user": [1, 2, 3, 1], "item": [1, 1, 1, 2]})
    both = [c(n_uniform=6, logq="exact").fit(train, 3) for c in (InBatchSampler, MixedSampler)]
    batches = [s.batch_fn(torch.from_numpy(s.item_log_q_), seed=3)({"item": torch.tensor([1, 2])})
               for s in both]  # fmt: skip
    for key in ("neg", "log_q", "neg_log_q"):
        assert torch.equal(batches[0][key], batches[1][key])
    plain = InBatchSampler().fit(train, 3)
    assert "neg" not in plain.batch_fn(torch.from_numpy(plain.item_log_q_))(
        {"item": torch.ones(2, dtype=torch.long)}
    )
    with pytest.raises(TwoTowerError, match="sampler.n_uniform must be >= 0, got -1"):
        InBatchSampler(n_uniform=-1)


def test_streaming_estimate_converges_to_the_true_batch_frequency():
    # a stream of batches of 16 draws from a skewed distribution over 30 items; the chance an
    # item is in a batch is 1 - (1 - q)^16, what 1 / (average gap) estimates
    rng = np.random.default_rng(0)
    q = 1.0 / np.arange(1, 31) ** 0.8
    q /= q.sum()
    est = StreamingFrequency(31, alpha=0.01)
    for _ in range(8000):
        est.update(torch.from_numpy(rng.choice(30, 16, p=q) + 1))
    truth = 1 - (1 - q) ** 16
    got = est.prob(torch.arange(1, 31)).numpy()
    rel = np.abs(got / truth - 1)
    assert rel.mean() < 0.06
    assert rel.max() < 0.2
    # the order of popularity is recovered at the head
    assert got[0] > got[4] > got[29]


def test_streaming_in_batch_fills_log_q_from_the_estimate():
    s = InBatchSampler(logq="streaming", alpha=0.5)
    fn = s.batch_fn(torch.zeros(4))
    # step 0: items 1, 2 first seen -> gap 1 (step + 1), log 1 = 0
    assert fn({"item": torch.tensor([1, 2])})["log_q"].tolist() == [0.0, 0.0]
    # step 1: item 3 first seen -> gap 2; step 2: item 1 again, gap 2 -> 0.5 * 1 + 0.5 * 2
    assert fn({"item": torch.tensor([3])})["log_q"].tolist() == pytest.approx([np.log(0.5)])
    out = fn({"item": torch.tensor([1, 1])})["log_q"].tolist()
    assert out == pytest.approx([np.log(1 / 1.5)] * 2)


EXPERIMENTS = options("experiment")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_overlay_composes_and_has_its_own_run_dir(name: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        plain = compose("config")
        cfg = compose("config", overrides=[f"experiment={name}"])
    assert cfg.paths.run == name
    # the plain config's run name follows the model choice (a Hydra interpolation)
    assert plain.paths._get_node("run")._value() == "${run_name:${hydra:runtime.choices.model}}"
    assert cfg.seed == plain.seed


@pytest.mark.parametrize("sampler", [InBatchSampler(), InBatchSampler(logq="off"),
                                     MixedSampler(n_uniform=8)])  # fmt: skip
def test_streamed_sample_equals_the_in_memory_one(tmp_path: Path, sampler):
    """The sample stage's bounded pass (fit_stream over batches of train.parquet, written as
    it goes) gives the examples and logQ of fit + examples() on the whole table."""
    from twotower_cli.artifacts.store import iter_split, write_batches

    train = make_train().assign(timestamp=0)
    train.to_parquet(tmp_path / "train.parquet", row_group_size=50)
    fitted = type(sampler)(**{k: v for k, v in vars(sampler).items()}).fit(train, N_ITEMS)
    batches = iter_split(tmp_path, "train", ["user", "item"], rows=37)  # batches of 37 rows
    path = tmp_path / "examples.parquet"
    n = sampler.fit_stream(batches, N_ITEMS, lambda frames: write_batches(path, frames))
    assert n == len(train)
    pd.testing.assert_frame_equal(pd.read_parquet(path), fitted.examples())
    np.testing.assert_array_equal(sampler.item_log_q_, fitted.item_log_q_)
    empty = tmp_path / "empty"
    empty.mkdir()
    train.iloc[:0].to_parquet(empty / "train.parquet")
    with pytest.raises(TwoTowerError, match="the training split has no positives"):
        sampler.fit_stream(iter_split(empty, "train", ["user", "item"]), N_ITEMS,
                           lambda frames: write_batches(empty / "x.parquet", frames))  # fmt: skip


def test_full_sampler_adds_the_catalogue_and_refuses_a_large_one():
    train = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 3]})
    s = CatalogueSampler(max_items=3).fit(train, 3)
    assert s.loss == "full_softmax" and s.negatives() is None
    batch = s.batch_fn(torch.tensor(s.item_log_q_))({"item": torch.tensor([2, 3])})
    assert batch["neg"].tolist() == [1, 2, 3] and "log_q" not in batch
    with pytest.raises(TwoTowerError, match=r"sampler=full: 4 items > sampler.max_items=3 "):
        CatalogueSampler(max_items=3).fit(train, 4)
    with pytest.raises(TwoTowerError, match="sampler.max_items must be >= 1, got 0"):
        CatalogueSampler(max_items=0)


# what the stages read off a sampler before fitting it, and its type
CAPABILITIES = {"loss": str, "logq": str, "train_only": tuple, "streams": bool, "needs_band": bool}
# per sampler option: whether the sample stage streams it (in-batch: the examples are the
# positives) and the loss `loss: auto` takes
STREAMS_AND_LOSS = {
    "inbatch": (True, "inbatch_softmax"), "mixed": (True, "inbatch_softmax"),
    "uniform": (True, "sampled_softmax"), "full": (True, "full_softmax"),
    "random": (False, "bce"), "popularity": (False, "bce"), "hard": (False, "bce"),
}  # fmt: skip


def test_the_base_class_declares_every_capability_with_a_line_saying_what_it_is():
    for name, kind in CAPABILITIES.items():
        assert isinstance(vars(Sampler)[name], kind), name
        assert f"- `{name}`:" in Sampler.__doc__, name


@pytest.mark.parametrize("option", options("sampler"))
def test_every_sampler_answers_each_capability_as_the_stages_rely_on(option: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"sampler={option}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # sampler=hard's source_dir reads the run's paths
    sampler = instantiate(cfg.sampler)
    assert isinstance(sampler, Sampler)
    for name, kind in CAPABILITIES.items():
        assert isinstance(getattr(sampler, name), kind), name
    # a new sampler option: add its row to STREAMS_AND_LOSS
    assert (sampler.streams, sampler.loss) == STREAMS_AND_LOSS[option]
    assert sampler.loss in LOSSES and sampler.logq in LOGQ_MODES
    assert not sampler.needs_band  # every option's default fits without a mined band
    # train_only names constructor parameters (the sample's config keys train may change)
    assert set(sampler.train_only) <= set(inspect.signature(type(sampler)).parameters)
    # a streamed sample writes examples and logQ only: no explicit negatives to lose
    fitted = sampler.fit(make_train(), N_ITEMS, item_table())
    assert (fitted.negatives() is None) == sampler.streams
    assert sampler.streams == callable(getattr(sampler, "fit_stream", None))


def test_only_mined_hard_negatives_need_the_band():
    assert HardNegativeSampler(kind="mined").needs_band
    assert not HardNegativeSampler(kind="rule").needs_band
    with pytest.raises(TwoTowerError, match="fit needs the mined band"):
        HardNegativeSampler(kind="mined").fit(make_train(), N_ITEMS, item_table())
