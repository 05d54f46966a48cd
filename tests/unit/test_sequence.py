"""The sequence user tower (`model.history_pooling=transformer`): causal, its training positions
are the serving vectors of the prefixes, every variant trains a next-item step, sequences are
built from the sorted log, and the ONNX export matches PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import options

from twotower_cli.core.errors import ConfigError
from twotower_cli.export.user_tower import export_onnx
from twotower_cli.models.dssm import DSSM
from twotower_cli.samplers import UniformSampler
from twotower_cli.training.losses import inbatch_softmax, sampled_softmax
from twotower_cli.training.sequences import (
    SequenceBatch,
    check_sequence_training,
    flatten_positions,
    sequence_examples,
)
from twotower_cli.training.trainer import gather, user_features
from unit.test_models import N_ITEMS, N_USERS, SCHEMA, B, compose_model, features

L = 6
SEQ = ["model.history=true", "model.history_pooling=transformer", f"model.history_len={L}",
       "model.history_heads=2", "model.dropout=0"]  # fmt: skip


def sequence_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """B sequences of L + 1 items, right-aligned: row i holds min(i + 2, L + 1) items."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    length = torch.arange(B).add(2).clamp(max=L + 1)
    seq[torch.arange(L + 1).unsqueeze(0) < (L + 1 - length).unsqueeze(1)] = 0
    return {"user": torch.randint(1, N_USERS + 1, (B,), generator=g), "item": seq[:, -1],
            "label": torch.ones(B), "user.history": seq}  # fmt: skip


def user_table(seed: int = 0) -> dict[str, torch.Tensor]:
    """A user table indexed by id (row 0 = padding)."""
    g = torch.Generator().manual_seed(seed)
    n = N_USERS + 1
    return {"user": torch.arange(n), "age": torch.randint(0, 8, (n,), generator=g),
            "score": torch.randn(n, generator=g)}  # fmt: skip


def test_positions_predict_the_next_item_and_name_their_place():
    # one sequence [0, 0, 5, 7, 9]: inputs [0, 0, 5, 7], targets [0, 5, 7, 9];
    # positions 2 and 3 hold an item (flat 2, 3), their targets are 7 and 9
    seq = torch.tensor([[0, 0, 5, 7, 9], [0, 0, 0, 3, 4]])
    rows = flatten_positions({"user": torch.tensor([1, 2]), "item": seq[:, -1],
                              "label": torch.ones(2), "user.history": seq})  # fmt: skip
    assert rows["item"].tolist() == [7, 9, 4]
    assert rows["user.history_at"].tolist() == [2, 3, 7]  # row 1's position 3 is flat 4 + 3
    assert rows["user.history"].tolist() == [[0, 0, 5, 7], [0, 0, 0, 3]]
    assert rows["user"].tolist() == [1, 2]  # the features stay per sequence


def test_sequence_examples_are_each_users_latest_items_in_time_order():
    # user 1: items 4, 2, 3 at times 30, 10, 20 -> [2, 3, 4]; user 2: one item (no next
    # item: left out); user 3: 5 items, truncated to the latest history_len + 1 = 3
    train = pd.DataFrame({"user": [1, 1, 1, 2, 3, 3, 3, 3, 3],
                          "item": [4, 2, 3, 9, 1, 2, 3, 4, 5],
                          "timestamp": [30, 10, 20, 5, 1, 2, 3, 4, 5]})  # fmt: skip
    ex = sequence_examples(train, n_users=3, history_len=2)
    assert ex["user"].tolist() == [1, 3]
    assert ex["user.history"].tolist() == [[2, 3, 4], [3, 4, 5]]
    assert ex["item"].tolist() == [4, 5]


def test_a_later_item_never_changes_an_earlier_position():
    model = compose_model("dssm", *SEQ).eval()
    enc, table = model.history_pool, model.item_fields.tables["item"]
    hist = sequence_batch()["user.history"][:, :-1]
    changed = hist.clone()
    changed[:, -1] = (changed[:, -1] % N_ITEMS) + 1  # another latest item
    at = torch.arange(B * L)
    with torch.no_grad():
        a = enc(hist, table, at=at).view(B, L, -1)
        b = enc(changed, table, at=at).view(B, L, -1)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    assert (a[:, -1] - b[:, -1]).abs().amax(-1).min() > 1e-4  # the last position sees it


@pytest.mark.parametrize("name", ["dssm", "senet"])
def test_each_training_position_is_the_serving_vector_of_its_prefix(name):
    model = compose_model(name, *SEQ).eval()
    rows = flatten_positions(sequence_batch())
    with torch.no_grad():
        trained = model.user_vectors(user_features(user_table(), rows))
        hist, at = rows["user.history"], rows["user.history_at"]
        # position t of sequence i, served: the history up to t, right-aligned in L columns
        i, t = at // L, at % L
        prefix = torch.zeros(len(at), L, dtype=torch.long)
        for r in range(len(at)):  # (a test may loop; the code under test does not)
            prefix[r, L - 1 - t[r] :] = hist[i[r], : t[r] + 1]
        served = model.user_vectors({**gather(user_table(), rows["user"][i]), "history": prefix})
    torch.testing.assert_close(trained, served, rtol=0, atol=1e-5)


@pytest.mark.parametrize("loss", [inbatch_softmax, sampled_softmax])
@pytest.mark.parametrize("name", [n for n in options("model") if n != "multitask"])
def test_every_variant_trains_a_next_item_step(name, loss):
    model = compose_model(name, *SEQ)
    step = SequenceBatch(UniformSampler(n_negatives=8).batch_fn(torch.zeros(N_ITEMS + 1)))
    rows = step(sequence_batch())
    items = features()[1]
    item_table = {"item": torch.arange(N_ITEMS + 1),
                  "genres": torch.randint(0, 6, (N_ITEMS + 1, 3))}  # fmt: skip
    neg_feats = gather(item_table, rows["neg"])
    assert set(items) == set(item_table)
    loss_value = model.batch_loss(loss, user_features(user_table(), rows),
                                  gather(item_table, rows["item"]), rows, neg_feats)  # fmt: skip
    assert loss_value.ndim == 0 and torch.isfinite(loss_value)
    loss_value.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or float(p.grad.abs().sum()) == 0.0]  # fmt: skip
    assert no_grad == []


def test_heads_must_divide_the_embedding():
    with pytest.raises(ConfigError, match="history_heads=3 must divide model.embed_dim=64"):
        DSSM(SCHEMA, history=True, history_pooling="transformer", history_heads=3)


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_sequence_tower_matches_pytorch(tmp_path, batch):
    model = compose_model("dssm", *SEQ).eval()
    users = gather(user_table(), torch.arange(1, B + 1))
    users["history"] = sequence_batch()["user.history"][:, 1:]
    users["history"][0] = 0  # no history at all
    names = list(users)
    export_onnx(model, {k: v[:2] for k, v in users.items()}, names, tmp_path / "u.onnx")
    feats = {k: v[:batch] for k, v in users.items()}
    (u_onnx,) = ort.InferenceSession(str(tmp_path / "u.onnx")).run(
        None, {k: v.numpy() for k, v in feats.items()})  # fmt: skip
    with torch.no_grad():
        np.testing.assert_allclose(u_onnx, model.user_vectors(feats).numpy(), rtol=0, atol=1e-5)


def test_all_windows_predict_every_positive_but_each_users_first():
    # user 1: items 1..6 in time order, history_len 2: windows end at 6, 4, 2 ->
    # [4, 5, 6], [2, 3, 4], [0, 1, 2]; targets 5, 6 | 3, 4 | 2: every item but the first
    train = pd.DataFrame({"user": [1] * 6 + [2], "item": [1, 2, 3, 4, 5, 6, 9],
                          "timestamp": range(7)})  # fmt: skip
    ex = sequence_examples(train, n_users=2, history_len=2, windows="all")
    assert ex["user"].tolist() == [1, 1, 1]
    assert ex["user.history"].tolist() == [[4, 5, 6], [2, 3, 4], [0, 1, 2]]
    targets = flatten_positions({**{k: torch.from_numpy(v) for k, v in ex.items()}})["item"]
    assert sorted(targets.tolist()) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize(("negatives", "tasks", "nproc", "message"), [
    (True, (), 1, "use sampler=inbatch|mixed|uniform|full"),
    (False, ("watch",), 1, "not with model=multitask"),
    (False, (), 2, "set train.nproc=1"),
])  # fmt: skip
def test_what_next_item_training_does_not_do_is_one_line(negatives, tasks, nproc, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_sequence_training(None, negatives, tasks, nproc)
    assert "\n" not in str(err.value)
