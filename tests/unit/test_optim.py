"""The trainer's building blocks that replace torch ones for speed, checked against them:
LazyAdam against SparseAdam, the MLP's Dropout against inverted dropout's contract, and the
sparse-embedding optimiser split (only the batch's rows move)."""

from __future__ import annotations

import copy

import pytest
import torch

from twotower_cli.models.blocks import Dropout
from twotower_cli.models.inputs import feature_tensors
from twotower_cli.training.optim import LazyAdam
from twotower_cli.training.trainer import gather


def test_lazy_adam_matches_sparse_adam_and_leaves_untouched_rows_alone():
    torch.manual_seed(0)
    ours = torch.nn.Embedding(40, 6, sparse=True)
    theirs = copy.deepcopy(ours)
    opt_ours = LazyAdam([ours.weight], lr=0.05)
    opt_theirs = torch.optim.SparseAdam([theirs.weight], lr=0.05)
    gen = torch.Generator().manual_seed(1)
    start = ours.weight.detach().clone()
    for _ in range(15):
        ids = torch.randint(0, 30, (25,), generator=gen)  # rows 30..39 never drawn
        w = torch.randn(25, 6, generator=gen)
        for table, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (table(ids) * w).sum().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-6)
    assert not torch.equal(ours.weight[:30], start[:30])
    assert torch.equal(ours.weight[30:], start[30:])


def test_lazy_adam_refuses_dense_gradients():
    p = torch.nn.Parameter(torch.ones(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="sparse"):
        LazyAdam([p]).step()


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_1_minus_p_scaled_and_its_gradient_is_the_same_mask(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted: the mean is kept
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x is the scaled mask itself
    # a fresh mask per call, no row/column pattern
    other = drop(x) != 0
    assert (other != kept).float().mean().item() == pytest.approx(2 * p * (1 - p), abs=0.01)
    assert kept.float().mean(0).std().item() < 0.05 and kept.float().mean(1).std().item() < 0.05


def test_dropout_is_the_identity_in_eval_and_seeded_in_training():
    drop = Dropout(0.3)
    x = torch.randn(50, 40)
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(a, drop(x))
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_the_mlp_fuses_relu_and_dropout_into_the_same_values_and_gradients():
    # the MLP's training path (ReLU and Dropout as one masked product) against the plain
    # chain relu(x) * [draw >= threshold] / (1 - p) from the same random draw, bit for bit
    from twotower_cli.models.blocks import MLP

    mlp = MLP(12, [32, 16], 4, dropout=0.25)
    x = torch.randn(64, 12, requires_grad=True)
    torch.manual_seed(3)
    out = mlp(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *mlp.parameters()])

    def plain(h: torch.Tensor, drop: Dropout) -> torch.Tensor:
        bits = torch.empty((h.numel() + 3) // 4, dtype=torch.int64)
        bits.random_(-(2**63), 2**63 - 1)
        keep = bits.view(torch.int16)[: h.numel()].view(h.shape) >= drop.threshold
        return torch.relu(h) * (keep.float() * (1 / (1 - drop.p)))

    torch.manual_seed(3)
    h = x
    for i in (0, 3):
        h = plain(mlp[i](h), mlp[i + 2])
    expected = mlp[6](h)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *mlp.parameters()])
    assert torch.equal(out, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    mlp.eval()  # no dropout: the layers one by one
    assert torch.equal(mlp(x), mlp[6](torch.relu(mlp[3](torch.relu(mlp[0](x))))))


def test_sparse_embeddings_move_only_the_rows_in_the_batch(small):
    from twotower_cli.models.dssm import DSSM
    from twotower_cli.training.trainer import TrainSettings, optimizers

    enc, _ = small
    schema = {s: [vars(f) for f in fs] for s, fs in enc.schema.items()}
    users = feature_tensors(enc.users, enc.schema["user"])
    items = feature_tensors(enc.items, enc.schema["item"])
    moved = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        model = DSSM(schema, embed_dim=8, hidden=[16], out_dim=8, dropout=0.0, history=False)
        opts = optimizers(model, TrainSettings(lr=0.01, batch_size=3, sparse_embeddings=sparse))
        table = model.user_fields.tables["user"]
        assert table.sparse is sparse
        for batch in ([1, 2, 3], [4, 5, 6]):  # user 1 is only in the first batch
            ids = torch.tensor(batch)
            u = model.user_vectors(gather(users, ids))
            v = model.item_vectors(gather(items, ids))
            loss = -(u * v).sum()
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            if batch[0] == 4:
                before = table.weight[1].detach().clone()
            for opt in opts:
                opt.step()
        moved[sparse] = not torch.equal(table.weight[1], before)
    # dense Adam keeps moving user 1 on momentum; the lazy (sparse) Adam leaves it alone
    assert moved == {False: True, True: False}


def test_l2_normalize_gives_f_normalize_values_and_gradients():
    from torch.nn import functional as F

    from twotower_cli.models.blocks import L2Normalize

    torch.manual_seed(0)
    x = torch.randn(50, 8, requires_grad=True)
    x_zero = torch.zeros(2, 8, requires_grad=True)  # a clamped norm: the gradient is g / eps
    g = torch.randn(50, 8)
    for inp, grad in ((x, g), (x_zero, g[:2])):
        ours = L2Normalize.apply(inp)
        theirs = F.normalize(inp, dim=-1)
        assert torch.equal(ours, theirs)
        (g_ours,) = torch.autograd.grad(ours, inp, grad)
        (g_theirs,) = torch.autograd.grad(theirs, inp, grad)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(64,), (64, 3)])  # categorical, multihot
def test_field_lookup_gives_the_embedding_gradient_padding_row_zero(shape):
    from twotower_cli.models.blocks import FieldEmbedding

    kind = "categorical" if len(shape) == 1 else "multihot"
    torch.manual_seed(0)
    fields = FieldEmbedding([{"name": "f", "kind": kind, "vocab_size": 7, "max_len": 3}], 4)
    ids = torch.randint(0, 7, shape)  # 0 (padding) among them
    w = torch.randn(64, 1, 4)
    (fields({"f": ids}) * w).sum().backward()  # training: _Lookup's index_add_ backward
    ours = fields.tables["f"].weight.grad.clone()
    fields.zero_grad()
    fields.eval()  # eval: nn.Embedding's own backward
    (fields({"f": ids}) * w).sum().backward()
    theirs = fields.tables["f"].weight.grad
    assert torch.equal(ours[0], torch.zeros(4))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
