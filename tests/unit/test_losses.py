"""Losses on hand-worked batches: bce, sampled softmax, in-batch softmax with logQ, masks."""

from __future__ import annotations

import math

import pytest
import torch

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.training.losses import (
    bce,
    full_softmax,
    inbatch_softmax,
    resolve,
    sampled_softmax,
)

E = math.e
I2 = torch.eye(2)


def test_inbatch_softmax_subtracts_log_q_per_column():
    # u = v = identity, scale 1: sims [[1, 0], [0, 1]]; log Q = [log 2, 0] per column
    # row 0: logits [1 - ln2, 0]  -> -log((e/2) / (e/2 + 1)) = log(1 + 2/e) = 0.5502
    # row 1: logits [-ln2, 1]     -> -log(e / (1/2 + e))     = log(1 + 1/(2e)) = 0.1688
    batch = {"item": torch.tensor([1, 2]), "log_q": torch.tensor([math.log(2), 0.0])}
    loss = inbatch_softmax(1.0, I2, I2, None, batch)
    expected = (math.log(1 + 2 / E) + math.log(1 + 1 / (2 * E))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # without logQ both rows are log(1 + 1/e) = 0.3133
    loss = inbatch_softmax(1.0, I2, I2, None, {"item": torch.tensor([1, 2])})
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), rel=1e-5)


def test_inbatch_softmax_masks_the_same_item_twice():
    # both rows hold item 7: the other column is the row's own positive, not a negative, so
    # each row's softmax has a single column and the loss is 0
    batch = {"item": torch.tensor([7, 7])}
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert inbatch_softmax(5.0, u, u, None, batch).item() == pytest.approx(0.0, abs=1e-6)


def test_inbatch_softmax_with_shared_negatives_of_mixed_sampling():
    # one row, u = v = [1, 0]; shared negatives [0, 1] (item 5) and [1, 0] (item 3 = its own
    # positive, masked); neg log Q [0, 0]: logits [1, 0] -> log(1 + 1/e)
    batch = {"item": torch.tensor([3]), "neg": torch.tensor([5, 3]),
             "log_q": torch.tensor([0.0]), "neg_log_q": torch.tensor([0.0, 0.0])}  # fmt: skip
    u = torch.tensor([[1.0, 0.0]])
    v_neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = inbatch_softmax(1.0, u, u, v_neg, batch)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), rel=1e-5)


def test_sampled_softmax_corrects_and_masks():
    # u = v = [1, 0]; per-row negatives [0, 1] (item 9) and [1, 0] (item 4 = the positive)
    # log Q: positive log 1 = 0, negatives [log(1/2), 0]
    # logits [1, 0 - log(1/2) = ln2, masked] -> -log(e / (e + 2)) = log(1 + 2/e) = 0.5502
    neg_log_q = torch.tensor([[math.log(0.5), 0.0]])
    batch = {"item": torch.tensor([4]), "neg": torch.tensor([[9, 4]]),
             "log_q": torch.tensor([0.0]), "neg_log_q": neg_log_q}  # fmt: skip
    u = torch.tensor([[1.0, 0.0]])
    v_neg = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    loss = sampled_softmax(1.0, u, u, v_neg, batch)
    assert loss.item() == pytest.approx(math.log(1 + 2 / E), rel=1e-5)


def test_bce_is_pointwise_over_positive_and_negatives():
    # positive logit 2 * <u, v> = 2 -> softplus(-2) = 0.1269; negative logit 0 -> log 2 = 0.6931
    # mean of the two = 0.4100
    u = torch.tensor([[1.0, 0.0]])
    v_neg = torch.tensor([[[0.0, 1.0]]])
    loss = bce(2.0, u, u, v_neg, {"item": torch.tensor([1]), "neg": torch.tensor([[2]])})
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_explicit_losses_need_negatives_and_names_are_checked():
    batch = {"item": torch.tensor([1, 2])}
    with pytest.raises(TwoTowerError, match="loss=sampled_softmax needs explicit negatives"):
        sampled_softmax(1.0, I2, I2, None, batch)
    with pytest.raises(TwoTowerError, match="loss=bce needs explicit negatives"):
        bce(1.0, I2, I2, None, batch)
    with pytest.raises(TwoTowerError, match="loss: 'hinge'"):
        resolve("hinge", "bce")
    assert resolve("auto", "bce")[1] == "bce"
    assert resolve("sampled_softmax", "bce")[1] == "sampled_softmax"


def test_inbatch_softmax_masks_other_positives_of_the_same_user():
    # rows 0 and 1 are both user 5 (items 1, 2), row 2 is user 6 (item 3); u = v = e_i, scale 1
    # row 0: column 1 is user 5's positive too -> masked; logits [1, 0] -> log(1 + 1/e)
    # row 2: nothing masked; logits [0, 0, 1] -> log(1 + 2/e)
    eye = torch.eye(3)
    batch = {"item": torch.tensor([1, 2, 3]), "user": torch.tensor([5, 5, 6])}
    loss = inbatch_softmax(1.0, eye, eye, None, batch)
    expected = (2 * math.log(1 + 1 / E) + math.log(1 + 2 / E)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("with_log_q", [False, True])
def test_fused_inbatch_softmax_equals_the_plain_formula_and_its_gradients(shared, with_log_q):
    # the in-place DiagonalSoftmaxLoss against cross_entropy of the masked, corrected logits,
    # on a batch with repeated items and users (so both masks fire)
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(0)
    B, m, d = 48, 12, 6
    u = torch.randn(B, d, generator=gen, requires_grad=True)
    v = torch.randn(B, d, generator=gen, requires_grad=True)
    v_neg = torch.randn(m, d, generator=gen, requires_grad=True) if shared else None
    item = torch.randint(1, 15, (B,), generator=gen)
    user = torch.randint(1, 20, (B,), generator=gen)
    batch = {"item": item, "user": user}
    cols, col_items = (torch.cat([v, v_neg]), item) if shared else (v, item)
    if shared:
        batch["neg"] = torch.randint(1, 15, (m,), generator=gen)
    if with_log_q:
        batch["log_q"] = torch.randn(B, generator=gen)
        if shared:
            batch["neg_log_q"] = torch.randn(m, generator=gen)
    params = [u, v] + ([v_neg] if shared else [])
    loss = inbatch_softmax(8.0, u, v, v_neg, batch)
    grads = torch.autograd.grad(loss, params)

    logits = (u @ cols.T) * 8.0
    if with_log_q:
        log_q = [batch["log_q"]] + ([batch["neg_log_q"]] if shared else [])
        logits = logits - torch.cat(log_q)
    hit = (item[:, None] == col_items[None]) | (user[:, None] == user[None])
    hit.fill_diagonal_(False)
    if shared:
        hit = torch.cat([hit, batch["neg"][None] == item[:, None]], dim=1)
    assert hit.sum() > 0
    expected = F.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(B))
    expected_grads = torch.autograd.grad(expected, params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_equal_pairs_are_the_off_diagonal_equalities_of_the_first_rows():
    from twotower_cli.training.losses import equal_pairs

    keys = torch.tensor([4, 2, 4, 9, 2, 4, 7, 9])
    r, c = equal_pairs(keys, rows=5)
    got = sorted(zip(r.tolist(), c.tolist(), strict=True))
    dense = (keys[:5, None] == keys[None]).fill_diagonal_(False)
    assert got == sorted(map(tuple, dense.nonzero().tolist()))
    assert (0, 5) in got and (5, 0) not in got  # rows stop at 5, columns do not


def test_fused_inbatch_softmax_keeps_the_inputs_dtype():
    u = torch.eye(3, dtype=torch.float64, requires_grad=True)
    batch = {"item": torch.tensor([1, 1, 2])}  # rows 0 and 1 share an item: a masked pair
    loss = inbatch_softmax(2.0, u, u, None, batch)
    loss.backward()
    assert loss.dtype == torch.float64 and u.grad.dtype == torch.float64


def test_full_softmax_hand_worked_and_equal_to_sampled_softmax_over_the_catalogue():
    # catalogue of 3 items, vectors e1, e2, e1 + e2; one row u = e1 with positive item 1,
    # scale 1: logits [1, 0, 1] -> -log(e / (e + 1 + e)) = log(2 + 1/e) = 0.8620
    catalogue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    u = torch.tensor([[1.0, 0.0]])
    batch = {"item": torch.tensor([1]), "neg": torch.arange(1, 4)}
    loss = full_softmax(1.0, u, catalogue[:1], catalogue, batch)
    assert loss.item() == pytest.approx(math.log(2 + 1 / E), rel=1e-5)
    # sampled softmax with every item as a shared negative (the positive's own column masked)
    # is the same softmax
    torch.manual_seed(0)
    u, cat = torch.randn(5, 4), torch.randn(6, 4)
    batch = {"item": torch.tensor([1, 6, 3, 3, 2]), "neg": torch.arange(1, 7)}
    full = full_softmax(3.0, u, cat[batch["item"] - 1], cat, batch)
    sampled = sampled_softmax(3.0, u, cat[batch["item"] - 1], cat, batch)
    assert full.item() == pytest.approx(sampled.item(), rel=1e-5)


def test_full_softmax_needs_the_whole_catalogue_in_order():
    u = torch.ones(1, 2)
    for neg in (None, torch.tensor([2, 3]), torch.tensor([1, 3]), torch.tensor([[1, 2]])):
        batch = {"item": torch.tensor([1])} | ({} if neg is None else {"neg": neg})
        with pytest.raises(TwoTowerError, match="loss=full_softmax .* use sampler=full"):
            full_softmax(1.0, u, u, None if neg is None else torch.ones(2, 2), batch)
    assert resolve("auto", "full_softmax") == (full_softmax, "full_softmax")
