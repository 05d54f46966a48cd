"""Tower variants: every conf/model/*.yaml composes, instantiates, runs forward and backward;
the shared blocks on hand-worked numbers; the serving vectors reproduce the training scores;
task rows and user histories built by preprocess/train; the variants through the CLI."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import options
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.core.errors import ConfigError
from twotower_cli.data.preprocess import SplitSettings, preprocess
from twotower_cli.data.tables import RawData
from twotower_cli.models.blocks import HistoryPool, SENet, fm_interaction
from twotower_cli.models.multitask import MultiTaskTower
from twotower_cli.models.parallel import ParallelTower
from twotower_cli.models.senet import SENetTower
from twotower_cli.training.examples import (
    HistoryBatch,
    Timeline,
    attach_tasks,
    training_examples,
)
from twotower_cli.training.losses import bce, inbatch_softmax
from twotower_cli.training.trainer import user_features

MODEL_YAMLS = options("model")
N_USERS, N_ITEMS, B, L = 30, 40, 16, 5
SCHEMA = {
    "user": [
        {"name": "user", "kind": "categorical", "vocab_size": N_USERS + 1},
        {"name": "age", "kind": "categorical", "vocab_size": 8},
        {"name": "score", "kind": "numeric"},
    ],
    "item": [
        {"name": "item", "kind": "categorical", "vocab_size": N_ITEMS + 1},
        {"name": "genres", "kind": "multihot", "vocab_size": 6, "max_len": 3},
    ],
}


def features(seed: int = 0) -> tuple[dict, dict, dict]:
    """A batch of user features (with a history), item features and the example columns."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(1, N_USERS + 1, (B,), generator=g)
    item = torch.randperm(N_ITEMS, generator=g)[:B] + 1
    history = torch.randint(0, N_ITEMS + 1, (B, L), generator=g)
    history[0] = 0  # a user with no history at all
    users = {"user": user, "age": torch.randint(0, 8, (B,), generator=g),
             "score": torch.randn(B, generator=g), "history": history}  # fmt: skip
    items = {"item": item, "genres": torch.randint(0, 6, (B, 3), generator=g)}
    label = torch.ones(B)
    batch = {"user": user, "item": item, "label": label,
             "task.watch": torch.ones(B), "task.like": (torch.arange(B) % 2).float()}  # fmt: skip
    return users, items, batch


def compose_model(name: str, *overrides: str):
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # the model group's own values, not ML-100K's tuned ones (conf/tuned/ml100k.yaml)
        cfg = compose("config", overrides=["~tuned", f"model={name}", *overrides])
    return instantiate(cfg.model, schema=SCHEMA)


@pytest.mark.parametrize("history", ["", "mean", "attention", "mean,2", "attention,2"])
@pytest.mark.parametrize("name", MODEL_YAMLS)
def test_every_model_yaml_trains_a_step_and_gradients_reach_every_parameter(name, history):
    pooling, _, decay = history.partition(",")
    extra = (["model.history=true", f"model.history_pooling={pooling}",
              f"model.history_decay={decay or 0}"]
             if history else ["model.history=false"])  # fmt: skip
    model = compose_model(name, *extra)
    users, items, batch = features()
    u, v = model.user_vectors(users), model.item_vectors(items)
    assert u.shape == v.shape and u.shape[0] == B
    assert bool(torch.isfinite(u).all()) and bool(torch.isfinite(v).all())
    loss = model.batch_loss(inbatch_softmax, users, items, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or float(p.grad.abs().sum()) == 0.0]  # fmt: skip
    assert no_grad == []
    assert model.history_len == (50 if history else 0)  # the YAMLs' history_len


def test_history_is_required_when_on_and_ignored_when_off():
    users, items, _ = features()
    with_history = compose_model("dssm", "model.history=true")
    del users["history"]
    with pytest.raises(ValueError, match="carry no 'history'"):
        with_history.user_vectors(users)
    assert compose_model("dssm", "model.history=false").user_vectors(users).shape == (B, 64)


def test_history_pooling_shares_the_item_id_table():
    model = compose_model("dssm", "model.history=true")
    users, _, _ = features()
    users["history"] = torch.zeros(B, L, dtype=torch.long)
    users["history"][:, -1] = 7
    e = model.user_embeddings(users)
    # a history of the single item 7 pools (mean) to item 7's own id embedding
    expected = model.item_fields.tables["item"].weight[7]
    assert torch.allclose(e[:, -1], expected.expand(B, -1))


def test_history_decay_weighs_each_item_by_its_recency():
    table = torch.nn.Embedding(4, 2, padding_idx=0)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    history = torch.tensor([[0, 1, 2], [0, 0, 3], [0, 0, 0]])
    context = torch.zeros(3, 1, 2)
    pooled = HistoryPool(2, "mean", decay=1.0)(history, table, context)
    # row 0: item 2 is the latest (weight 1), item 1 one step older (weight e^-1 = 0.3679):
    # (0.3679 * [1, 0] + 1 * [0, 1]) / 1.3679 = [0.2689, 0.7311]; padding (0) is ignored
    e = float(np.exp(-1.0))
    assert torch.allclose(pooled[0], torch.tensor([e, 1.0]) / (1 + e))
    assert pooled[1].tolist() == [1.0, 1.0] and pooled[2].tolist() == [0.0, 0.0]
    # decay 0 is the plain mean of the present items
    assert HistoryPool(2, "mean")(history, table, context)[0].tolist() == [0.5, 0.5]
    # under attention the prior adds -age / decay to the scores: a tiny decay keeps the latest
    att = HistoryPool(2, "attention", decay=0.01)(history, table, context)
    assert torch.allclose(att[0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="history_decay must be >= 0"):
        HistoryPool(2, "mean", decay=-1.0)


def test_fm_interaction_equals_the_pairwise_sum_on_a_hand_worked_example():
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # pairs: [1,2]*[3,4] = [3,8]; [1,2]*[5,6] = [5,12]; [3,4]*[5,6] = [15,24] -> [23, 44]
    assert fm_interaction(e).tolist() == [[23.0, 44.0]]
    x = torch.randn(4, 5, 3)
    brute = sum(x[:, i] * x[:, j] for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(x), brute, atol=1e-5)


def test_senet_weights_are_in_zero_one_and_scale_each_field():
    se = SENet(n_fields=4, reduction=2)
    e = torch.randn(8, 4, 6)
    w = se.weights(e)
    assert w.shape == (8, 4) and bool((w > 0).all()) and bool((w < 1).all())
    # each field's embedding is multiplied by that field's own weight
    assert torch.allclose(se(e), e * w.unsqueeze(-1))
    # squeeze = the mean over the embedding dimension: fields with equal means get equal input
    same = torch.ones(1, 4, 6)
    assert torch.allclose(se.weights(same), se.excite(torch.ones(1, 4)))


def test_senet_field_weights_artifact_names_every_field():
    model = SENetTower(SCHEMA, embed_dim=8, hidden=[16], out_dim=8, history=True, history_len=L)
    users, items, _ = features()
    art = model.artifacts(users, items)["field_weights"]
    assert list(art["user"]) == ["user", "age", "score", "history"]
    assert list(art["item"]) == ["item", "genres"]
    assert all(0.0 < w < 1.0 for side in art.values() for w in side.values())


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_parallel_index_score_is_the_summed_channel_similarity(similarity):
    model = ParallelTower(SCHEMA, embed_dim=8, hidden=[16], out_dim=8, dropout=0.0,
                          similarity=similarity).eval()  # fmt: skip
    users, items, _ = features()
    with torch.no_grad():
        u, v = model.user_vectors(users), model.item_vectors(items)
        eu, ev = model.user_embeddings(users), model.item_embeddings(items)
        # independent: each channel's raw outputs, cosine (or dot) computed per channel
        direct = torch.zeros(B, B)
        for c in model.channels:
            a, b = model.user_channels[c](eu), model.item_channels[c](ev)
            if similarity == "cosine":
                a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
            direct += a @ b.T
    assert u.shape == (B, 8 * 3)
    assert torch.allclose(u @ v.T, direct, atol=1e-5)
    assert torch.allclose(model.channel_scores(u, v).sum(-1), direct.diagonal(), atol=1e-5)
    # and the faiss index ranks by it
    index = faiss.IndexFlatIP(u.shape[1])
    index.add(v.numpy())
    D, _ = index.search(u.numpy(), B)
    assert np.allclose(D, np.sort(direct.numpy(), axis=1)[:, ::-1], atol=1e-4)


def test_multitask_fused_index_score_is_the_weighted_sum_of_task_scores():
    model = MultiTaskTower(
        SCHEMA,
        tasks=["watch", "like"],
        embed_dim=8,
        hidden=[16],
        out_dim=8,
        fusion_weights={"watch": 0.3, "like": 2.0},
    ).eval()
    users, items, _ = features()
    with torch.no_grad():
        u, v = model.user_vectors(users), model.item_vectors(items)
        (uw, ul), (vw, vl) = model.task_vectors(users, "user"), model.task_vectors(items, "item")
        fused = model.fused_score(users, items)
    assert torch.allclose((u * v).sum(-1), fused, atol=1e-5)
    assert torch.allclose(u @ v.T, 0.3 * uw @ vw.T + 2.0 * ul @ vl.T, atol=1e-5)
    subs = model.sub_retrievals()
    assert subs == {"watch": (0, 8), "like": (8, 16)}
    a, b = subs["like"]
    # a task's columns rank like that task alone (scaled by its positive fusion weight)
    assert torch.allclose(u[:, a:b] @ v[:, a:b].T, 2.0 * ul @ vl.T, atol=1e-5)


def test_multitask_loss_is_the_weighted_sum_over_each_tasks_rows():
    model = MultiTaskTower(SCHEMA, tasks=["watch", "like"], embed_dim=8, hidden=[16],
                           out_dim=8, task_weights=[0.5, 2.0]).eval()  # fmt: skip
    users, items, batch = features()
    got = model.batch_loss(inbatch_softmax, users, items, batch)
    (uw, ul), (vw, vl) = model.task_vectors(users, "user"), model.task_vectors(items, "item")
    like = batch["task.like"] > 0  # odd rows: a watched but not liked row is not a `like` row
    s = model.logit_scale
    want = 0.5 * inbatch_softmax(s, uw, vw, None, batch) + 2.0 * inbatch_softmax(
        s, ul[like], vl[like], None, {k: t[like] for k, t in batch.items()}
    )
    assert torch.allclose(got, want)
    # with explicit per-row negatives, every task scores its own rows against their negatives
    batch["neg"] = (torch.arange(B * 2).view(B, 2) % (N_ITEMS - 1)) + 1
    neg_feats = {"item": batch["neg"].reshape(-1), "genres": torch.randint(0, 6, (B * 2, 3))}
    got = model.batch_loss(bce, users, items, batch, neg_feats)
    nw, nl = (n.view(B, 2, -1) for n in model.task_vectors(neg_feats, "item"))
    want = 0.5 * bce(s, uw, vw, nw, batch) + 2.0 * bce(s, ul[like], vl[like], nl[like], batch)
    assert torch.allclose(got, want)


def test_multitask_uncertainty_weighting_learns_a_log_variance_per_task():
    model = MultiTaskTower(SCHEMA, tasks=["watch", "like"], embed_dim=8, hidden=[16],
                           out_dim=8, weighting="uncertainty")  # fmt: skip
    users, items, batch = features()
    model.batch_loss(inbatch_softmax, users, items, batch).backward()
    assert model.log_vars.shape == (2,) and float(model.log_vars.grad.abs().min()) > 0
    # at s = 0 the loss is the plain sum: exp(0) * L + 0 / 2
    plain = MultiTaskTower(SCHEMA, tasks=["watch", "like"], embed_dim=8, hidden=[16],
                           out_dim=8).eval()  # fmt: skip
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "log_vars"})
    model.eval()
    assert torch.allclose(model.batch_loss(inbatch_softmax, users, items, batch),
                          plain.batch_loss(inbatch_softmax, users, items, batch))  # fmt: skip
    assert "learned_precision" in model.artifacts(users, items)["tasks"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tasks": []}, "model.tasks is empty"), ({"tasks": ["a", "a"]}, "duplicates"),
     ({"tasks": ["a"], "weighting": "learned"}, "model.weighting"),
     ({"tasks": ["a", "b"], "task_weights": {"a": 1}}, "no weight for task"),
     ({"tasks": ["a"], "fusion_weights": [0.0]}, "all zero")],
)  # fmt: skip
def test_multitask_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MultiTaskTower(SCHEMA, **kwargs)


def test_parallel_rejects_unknown_channels():
    with pytest.raises(ConfigError, match="model.channels"):
        ParallelTower(SCHEMA, channels=["dnn", "gbdt"])


# -- data: task rows and histories --------------------------------------------------------


def toy_raw() -> RawData:
    # user 1 rates 8 films at t = 1..8; likes are t = 1,2,3,5,6,8 (6 positives), the rest are
    # watched only. Split of the likes (fraction 0.2, min 5): test = round(0.2*6) = 1 -> t=8;
    # valid = round(0.2*5) = 1 -> t=6; train = t 1,2,3,5. Watched-only t=4 -> train,
    # t=7 (>= first valid like t=6, < first test like t=8) -> valid. User 2: 2 likes, kept whole.
    inter = pd.DataFrame({
        "user_id": [1] * 8 + [2, 2, 2],
        "item_id": [10, 11, 12, 13, 14, 15, 16, 17, 10, 11, 12],
        "timestamp": [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3],
        "like": [1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1],
    })  # fmt: skip
    inter["watch"] = 1
    users = pd.DataFrame({"user_id": [1, 2]})
    items = pd.DataFrame({"item_id": list(range(10, 18))})
    return RawData(inter, users, items, {}, {})


def test_preprocess_task_rows_follow_the_label_splits_timeline():
    split = SplitSettings(test_fraction=0.2, valid_fraction=0.2, min_positives=5)
    enc, plain, _ = preprocess(toy_raw(), "like", split)
    _, parts, counts = preprocess(toy_raw(), "like", split, ("watch", "like"))
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(parts[name], plain[name])  # single-task split unchanged
    ts = {n: parts[f"tasks_{n}"].query("user == 1")["timestamp"].tolist()
          for n in ("train", "valid", "test")}  # fmt: skip
    assert ts == {"train": [1, 2, 3, 4, 5], "valid": [6, 7], "test": [8]}
    assert parts["tasks_train"].query("user == 2")["timestamp"].tolist() == [1, 2, 3]
    assert counts["positives"] == 8 and counts["tasks_train"] == 8


def test_preprocess_names_a_missing_task_column():
    from twotower_cli.core.errors import TwoTowerError

    with pytest.raises(TwoTowerError, match="no task column 'click'"):
        preprocess(toy_raw(), "like", SplitSettings(), ("click",))


def histories(*args, **kwargs) -> torch.Tensor:
    """training_examples' per-example history windows, read off the timeline as a batch of
    every example would be (HistoryBatch)."""
    cols, timeline = training_examples(*args, **kwargs)
    length = kwargs["history_len"]
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in cols.items()}
    return HistoryBatch(timeline, length).expand(batch)["user.history"]


def test_history_is_the_items_before_each_example_never_the_target():
    # user 1's training timeline: items 10@1, 11@2, 12@3, 14@5 (user 2: 20@1)
    train = pd.DataFrame({"user": [1, 1, 1, 1, 2], "item": [12, 10, 14, 11, 20],
                          "timestamp": [3, 1, 5, 2, 1]})  # fmt: skip
    tl = Timeline(train, n_users=2)
    assert tl.per_user(2, 3).tolist() == [[0, 0, 0], [11, 12, 14], [0, 0, 20]]
    examples = pd.DataFrame({"user": [1, 1, 2, 1], "item": [12, 10, 20, 13],
                             "label": [1.0, 1.0, 1.0, 1.0],
                             "timestamp": [np.nan, np.nan, np.nan, 4.0]})  # fmt: skip
    hist = histories(examples, train, 2, 30, history_len=3)
    # 12 (t=3) sees 10, 11; 10 (first) sees nothing; 13 (t=4, off the timeline) sees 10,11,12
    assert hist.tolist() == [[0, 10, 11], [0, 0, 0], [0, 0, 0], [10, 11, 12]]
    # a sampled negative gets a prefix of its user's timeline
    neg = pd.DataFrame({"user": [1] * 50, "item": [13] * 50, "label": [0.0] * 50})
    hist = histories(neg, train, 2, 30, history_len=4, seed=1)
    prefixes = {(0, 0, 0, 0), (0, 0, 0, 10), (0, 0, 10, 11), (0, 10, 11, 12), (10, 11, 12, 14)}
    assert {tuple(h) for h in hist.tolist()} == prefixes  # 50 draws hit all 5 cut points


def test_leave_one_out_history_is_the_latest_items_less_the_example():
    # user 1's training timeline: 10@1, 11@2, 12@3, 14@5 (user 2: 20@1)
    train = pd.DataFrame({"user": [1, 1, 1, 1, 2], "item": [12, 10, 14, 11, 20],
                          "timestamp": [3, 1, 5, 2, 1]})  # fmt: skip
    examples = pd.DataFrame({"user": [1, 1, 1, 1, 2, 1, 1], "item": [12, 10, 14, 11, 20, 13, 13],
                             "label": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
                             "timestamp": [np.nan] * 6 + [4.0]})  # fmt: skip
    hist = histories(examples, train, 2, 30, history_len=3, history_mode="leave_one_out")
    # the latest 4 are 10, 11, 12, 14; each positive drops itself and keeps the latest 3 others;
    # user 2 has nothing but the example; a negative (13) and an off-timeline positive (13 at
    # t=4) drop nothing: the latest 3, as serving reads them
    assert hist.tolist() == [
        [10, 11, 14], [11, 12, 14], [10, 11, 12], [10, 12, 14], [0, 0, 0],
        [11, 12, 14], [11, 12, 14]]  # fmt: skip
    with pytest.raises(ConfigError, match="history_mode"):
        training_examples(examples, train, 2, 30, history_len=3, history_mode="future")


def test_a_repeated_user_item_pair_drops_its_own_row_not_the_first_copy():
    # user 1's timeline: 10@1, 12@2, 11@3, 12@4 (the log repeats (1, 12)); examples in split
    # order, so the first (1, 12) example is the row at t=2 and the second the row at t=4
    train = pd.DataFrame({"user": [1, 1, 1, 1], "item": [10, 12, 11, 12],
                          "timestamp": [1, 2, 3, 4]})  # fmt: skip
    examples = train[["user", "item"]].assign(label=1.0)
    loo = histories(examples, train, 1, 20, history_len=3, history_mode="leave_one_out")
    # t=2 keeps the other 12 (t=4); t=4 drops itself: 10, 12 (t=2), 11
    assert loo[[1, 3]].tolist() == [[10, 11, 12], [10, 12, 11]]
    causal = histories(examples, train, 1, 20, history_len=3)
    assert causal.tolist() == [[0, 0, 0], [0, 0, 10], [0, 10, 12], [10, 12, 11]]


def test_leave_one_out_history_matches_a_reference_loop_on_random_timelines():
    rng = np.random.default_rng(0)
    n_users, n_items, length = 6, 40, 4
    train = pd.DataFrame(
        {
            "user": rng.integers(1, n_users + 1, 120),
            "item": rng.integers(1, n_items + 1, 120),
            "timestamp": rng.integers(0, 30, 120),
        }
    ).drop_duplicates(["user", "item"])
    examples = train.sample(frac=1.0, random_state=0)[["user", "item"]].assign(label=1.0)
    hist = histories(examples, train, n_users, n_items, history_len=length,
                     history_mode="leave_one_out")  # fmt: skip
    timeline = train.sort_values(["user", "timestamp", "item"])
    for (user, item), row in zip(examples[["user", "item"]].values, hist, strict=True):
        others = [i for i in timeline.loc[timeline["user"] == user, "item"] if i != item]
        expected = [0] * length + others
        assert row.tolist() == expected[-length:]
        assert item not in row.tolist()


def test_causal_history_matches_a_reference_loop_and_stores_two_ids_an_example():
    rng = np.random.default_rng(1)
    n_users, n_items, length = 5, 30, 4
    train = pd.DataFrame({"user": rng.integers(1, n_users + 1, 100),
                          "item": rng.integers(1, n_items + 1, 100),
                          "timestamp": rng.permutation(100)})  # fmt: skip
    train = train.drop_duplicates(["user", "item"])
    examples = train.sample(frac=1.0, random_state=1)[["user", "item", "timestamp"]]
    examples = examples.assign(label=1.0)
    cols, _ = training_examples(examples, train, n_users, n_items, history_len=length)
    # the examples hold where each window ends and what it leaves out, not history_len ids
    assert "user.history" not in cols and {"history.end", "history.skip"} <= set(cols)
    hist = histories(examples, train, n_users, n_items, history_len=length)
    timeline = train.sort_values(["user", "timestamp", "item"])
    for (user, t), row in zip(examples[["user", "timestamp"]].values, hist, strict=True):
        before = timeline.loc[(timeline["user"] == user) & (timeline["timestamp"] < t), "item"]
        assert row.tolist() == ([0] * length + before.tolist())[-length:]


def test_attach_tasks_labels_examples_and_appends_task_only_positives():
    rows = pd.DataFrame({"user": [1, 1, 1], "item": [10, 11, 12], "timestamp": [1, 2, 3],
                         "like": [1, 0, 1], "watch": [1, 1, 1]})  # fmt: skip
    examples = pd.DataFrame({"user": [1, 1, 1], "item": [10, 12, 11], "label": [1.0, 1.0, 0.0]})
    out = attach_tasks(examples, rows, ["watch", "like"], n_items=20)
    # (1, 11) as a sampled negative gets no task labels; the task row (1, 11) is appended
    assert out[["item", "label", "task.watch", "task.like"]].values.tolist() == [
        [10, 1, 1, 1], [12, 1, 1, 1], [11, 0, 0, 0], [11, 1, 1, 0]]  # fmt: skip
    ts = out["timestamp"].to_numpy()
    assert ts[[0, 1, 3]].tolist() == [1.0, 3.0, 2.0] and np.isnan(ts[2])


def test_user_features_take_per_example_columns_over_the_table():
    table = {"user": torch.arange(4), "history": torch.zeros(4, 2, dtype=torch.long)}
    batch = {"user": torch.tensor([3, 1]), "user.history": torch.tensor([[5, 6], [7, 8]])}
    feats = user_features(table, batch)
    assert feats["user"].tolist() == [3, 1] and feats["history"].tolist() == [[5, 6], [7, 8]]
