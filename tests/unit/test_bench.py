"""The benchmark's correctness on small sizes (`make bench` itself is not part of the tests):
the reference loops and twotower agree, the ANN recall is computed right, the synthetic data
set is cached and the fast evaluation paths match the plain ones."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the bench/ package

import faiss  # noqa: E402
from conftest import unit_vectors  # noqa: E402

from bench import flops, gpu, reference, timer  # noqa: E402
from bench.sections import ann, peers  # noqa: E402
from twotower_cli.models.inputs import feature_tensors  # noqa: E402
from twotower_cli.retrieval.search import (  # noqa: E402
    EvalSet,
    build_index,
    evaluate_index,
    exact_top_unseen,
)
from twotower_cli.training.trainer import gather  # noqa: E402

KS = [1, 5, 20]


def test_alternate_swaps_the_order_each_round_and_takes_medians(monkeypatch):
    now = [0.0]  # a fake clock that each call moves on by its planned seconds
    monkeypatch.setattr(timer.time, "perf_counter", lambda: now[0])
    calls = []
    planned = {"a": [1.0, 5.0, 2.0], "b": [0.5, 0.25, 4.0]}

    def side(name):
        def call(r):
            calls.append((name, r))
            now[0] += planned[name][r]
            return f"{name}{r}"

        return call

    def after(name, r, so_far):
        # the hook runs untimed, right after its call, and sees that call's seconds
        calls.append(("after", name, so_far.seconds[name][-1]))
        now[0] += 100.0

    rounds = timer.alternate(3, {"a": side("a"), "b": side("b")}, after=after,
                             round_end=lambda r, so_far: calls.append(("end", r)))  # fmt: skip
    # A B, then B A, then A B again
    assert calls == [
        ("a", 0), ("after", "a", 1.0), ("b", 0), ("after", "b", 0.5), ("end", 0),
        ("b", 1), ("after", "b", 0.25), ("a", 1), ("after", "a", 5.0), ("end", 1),
        ("a", 2), ("after", "a", 2.0), ("b", 2), ("after", "b", 4.0), ("end", 2),
    ]  # fmt: skip
    assert rounds.seconds == planned  # the hooks' 100 s never counted
    assert rounds.results == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    # medians: a of 1, 2, 5 -> 2; b of 0.25, 0.5, 4 -> 0.5; 10 things in 0.5 s -> 20 a second
    assert rounds.median("a") == 2.0 and rounds.median("b") == 0.5
    assert rounds.rate("b", 10) == 20.0
    assert timer.median([4.0, 1.0, 3.0, 2.0]) == 2.5  # an even count: the middle two's mean
    assert timer.turn(["1", "2", "2w", "2l"], 1) == ["2l", "2w", "2", "1"]


def test_reference_and_twotower_evaluation_agree(small):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    test = parts["test"]
    users = np.unique(test["user"].to_numpy())
    items, u = unit_vectors(enc.n_items, 0), unit_vectors(len(users), 1)
    ev = EvalSet.build(test, seen, enc.n_items)
    ours = evaluate_index(build_index(items, "Flat"), u, ev, KS, enc.n_items)
    theirs = reference.reference_evaluate(items, u, users, test, seen, KS, enc.n_items)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 < ours["recall@20"] < 1.0


def test_row_dataset_batch_equals_the_trainers_gather(small):
    enc, parts = small
    users = feature_tensors(enc.users, enc.schema["user"])
    items = feature_tensors(enc.items, enc.schema["item"])
    rows = parts["train"].iloc[:7]
    data = reference.RowDataset(rows["user"].to_numpy(), rows["item"].to_numpy(), users, items)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    user, item = reference.split_batch(batch)
    want_u = gather(users, torch.from_numpy(rows["user"].to_numpy(copy=True)))
    want_i = gather(items, torch.from_numpy(rows["item"].to_numpy(copy=True)))
    assert user.keys() == want_u.keys() and item.keys() == want_i.keys()
    for got, want in ((user, want_u), (item, want_i)):
        for name in want:
            assert torch.equal(got[name], want[name]), name


def test_recall_at_counts_overlap_per_query():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1], [7, 8, -1]])
    # query 0 finds 2 of its 3 (3 and 1), query 1 none: (2/3 + 0/3) / 2 = 1/3
    assert ann.recall_at(found, truth, 3) == pytest.approx(1 / 3)
    # at k = 2: query 0's top-2 {3, 9} vs truth {1, 2}: none; query 1: none -> 0
    assert ann.recall_at(found, truth, 2) == 0.0
    assert ann.recall_at(truth, truth, 3) == 1.0


def test_ann_sweep_reports_exact_recall_for_an_exhaustive_ivf():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16)).astype(np.float32)
    items = ann.clustered_vectors(2000, centres, 0.5, rng)
    queries = ann.clustered_vectors(50, centres, 0.5, rng)
    rows = ann.sweep(items, queries, {"IVF8,Flat": [1, 8]}, k=10, repeats=1, log=lambda m: None)
    by_param = {r["param"]: r for r in rows}
    # probing all 8 lists is an exhaustive search: every neighbour found
    assert by_param[8]["recall"] == pytest.approx(1.0)
    assert 0.0 < by_param[1]["recall"] <= 1.0
    # the first row is the faster exact search, both timed batched; every ratio divides by it
    assert rows[0]["index"] in ("Flat", "exact (twotower)") and rows[0]["qps_ratio"] == 1.0
    assert rows[0]["qps"] == max(rows[0]["exact_qps"].values())
    assert ann.best_meeting(rows, 0.99)["index"] == "IVF8,Flat"
    # every row carries its index's serialised size; Flat holds 2000 x 16 float32 = 128,000 B
    assert rows[0]["bytes"] >= 2000 * 16 * 4
    assert all(r["bytes"] > 0 for r in rows)


def test_ann_string_settings_reach_the_refine_and_ivf_levels():
    rng = np.random.default_rng(0)
    items = ann.clustered_vectors(3000, rng.standard_normal((10, 16)).astype(np.float32), 0.5, rng)
    index = build_index(items, "IVF16,PQ8x4fs,Refine(SQ8)")
    ann.set_params(index, "nprobe=16,k_factor_rf=4")
    assert index.k_factor == 4
    assert faiss.extract_index_ivf(index.base_index).nprobe == 16
    # the compressed part takes 8 x 4 bits = 4 B a vector, SQ8 16 B: far below Flat's 64 B
    assert ann.index_bytes(index) < ann.index_bytes(build_index(items, "Flat"))


def test_trained_vectors_reads_embed_output(tmp_path: Path):
    items, users = unit_vectors(30, 0), unit_vectors(12, 1)
    np.save(tmp_path / "item_vectors.npy", items)
    np.save(tmp_path / "user_vectors.npy", users)
    got_items, queries = ann.trained_vectors(tmp_path, n_queries=5)
    assert np.array_equal(got_items, items)
    # 5 distinct user rows, in their original order
    rows = [int(np.flatnonzero((users == q).all(1))[0]) for q in queries]
    assert len(set(rows)) == 5 and rows == sorted(rows)


def test_record_gemms_sees_forward_and_backward_products():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    shapes = flops.record_gemms(lambda: layer(x).sum().backward())
    # forward addmm [4,3]@[3,2]; backward: grad input [4,2]@[2,3], grad weight [2,4]@[4,3]
    assert sorted(shapes) == sorted([(4, 3, 2), (4, 2, 3), (2, 4, 3)])
    # 2 * (24 + 24 + 24) = 144 flops
    assert flops.gemm_flops(shapes) == 144
    replay = flops.GemmReplay(shapes)
    assert replay.flops == 144 and [o[2].shape for o in replay.ops] == [
        (m, n) for m, _, n in shapes
    ]
    assert replay.run(2) > 0


def test_step_gemms_include_towers_and_the_score_matrix(small):
    from types import SimpleNamespace

    from bench.sections.train import step_gemms
    from twotower_cli.models.dssm import DSSM

    enc, parts = small
    schema = {s: [vars(f) for f in fs] for s, fs in enc.schema.items()}
    data = SimpleNamespace(
        model=DSSM(schema, embed_dim=8, hidden=[16], out_dim=4, dropout=0.0, history=False),
        users=feature_tensors(enc.users, enc.schema["user"]),
        items=feature_tensors(enc.items, enc.schema["item"]),
        log_q=torch.zeros(enc.n_items + 1),
    )
    train = parts["train"].iloc[:32]
    shapes = step_gemms(data, train["user"].to_numpy(copy=True), train["item"].to_numpy(copy=True))
    # the 32 x 32 score matrix u @ v.T (k = out_dim 4) and its two backward products:
    # grad u = grad S @ v [32,32]@[32,4], grad v.T = u.T @ grad S [4,32]@[32,32]
    assert (32, 4, 32) in shapes and (32, 32, 4) in shapes and (4, 32, 32) in shapes
    # each tower's second layer 16 -> 4 forward, for both towers
    assert shapes.count((32, 16, 4)) == 2


def test_last_items_are_the_earlier_items_of_the_same_user():
    rows = pd.DataFrame({"user": [2, 1, 1, 1, 2], "item": [9, 5, 6, 7, 8],
                         "timestamp": [3, 10, 20, 30, 1]})  # fmt: skip
    hist, order = peers.last_items(rows, n=2)
    # sorted (user, time): user 1: 5, 6, 7; user 2: 8 (t=1), 9 (t=3)
    assert rows["item"].to_numpy()[order].tolist() == [5, 6, 7, 8, 9]
    assert hist.tolist() == [[0, 0], [0, 5], [5, 6], [0, 0], [0, 8]]
    # query history: everything seen, last 2; user 3 has none
    q = peers.query_history(rows, np.array([1, 2, 3]), n=2)
    assert q.tolist() == [[6, 7], [8, 9], [0, 0]]


def _prep_dir(tmp_path: Path, enc, parts) -> Path:
    """twotower-like preprocess tables in the ML-100K shape the peers adapter reads."""
    import json

    rng = np.random.default_rng(0)
    n_users, n_items = enc.n_users, enc.n_items
    users = pd.DataFrame({"user": np.arange(1, n_users + 1), "age": rng.integers(1, 8, n_users),
                          "gender": rng.integers(1, 3, n_users),
                          "occupation": rng.integers(1, 22, n_users),
                          "zip": rng.integers(1, 112, n_users)})  # fmt: skip
    genres = [list(rng.integers(1, 20, 2)) + [0] * 4 for _ in range(n_items)]
    items = pd.DataFrame({"item": np.arange(1, n_items + 1), "genres": genres})
    users.to_parquet(tmp_path / "users.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    for name in ("train", "valid", "test"):
        parts[name][["user", "item", "timestamp"]].to_parquet(tmp_path / f"{name}.parquet")
    sizes = {"user": n_users + 1, "age": 8, "gender": 3, "occupation": 22, "zip": 112}
    schema = {"user": [{"name": n, "vocab_size": v} for n, v in sizes.items()],
              "item": [{"name": "item", "vocab_size": n_items + 1},
                       {"name": "genres", "vocab_size": 20}]}  # fmt: skip
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    return tmp_path


def test_rechub_adapter_inputs_and_a_tiny_run(small, tmp_path: Path):
    pytest.importorskip("torch_rechub")
    enc, parts = small
    prep = _prep_dir(tmp_path, enc, parts)
    settings = peers.RechubSettings(dims=[16, 8], neg_ratio=2, batch_size=256, epochs=2,
                                    patience=1, lrs=[1e-3], lr_range=(1e-3, 1e-3))  # fmt: skip
    ad = peers.RechubAdapter(prep, settings)
    x, y = ad.train_inputs(seed=0)
    n = len(parts["train"])
    # every positive once plus 2 negatives each sharing its user row and history
    assert len(y) == 3 * n and y.sum() == n
    assert x["hist"].shape == (3 * n, peers.HIST_LEN)
    assert np.array_equal(x["user"][n::2], x["user"][:n]) and np.array_equal(
        x["hist"][n::2], x["hist"][:n]
    )
    assert set(np.unique(x["item"][n:])) <= set(parts["train"]["item"])
    out = peers.run_rechub(prep, settings, log=lambda m: None)
    assert 0.0 <= out["peer_rechub_recall@20"] <= 1.0 and out["peer_rechub_lr"] == 1e-3
    assert out["peer_rechub_lrs_tried"] == [1e-3] and 1 <= out["peer_rechub_epochs"] <= 2
    assert len(peers.rates(ad, x, y, settings, 1e-3, 2)) == 2
    assert out["peer_rechub_samples_per_s"] > 0 and out["peer_rechub_train_positives"] == n
    rate = out["peer_rechub_samples_per_s"]
    ours = {"peer_twotower_samples_per_s": 2 * rate, "peer_twotower_recall@20": 0.5}
    ratios = peers.combine(out, ours)
    assert ratios["peer_speedup"] == pytest.approx(2.0)


def test_the_rechub_grid_widens_past_a_best_end_within_the_range():
    # half a decade (x 10^0.5 = 3.16) past the end that holds the best validation recall
    grid = {1e-4: 0.08, 1e-3: 0.084, 1e-2: 0.112}
    assert peers.next_lr(grid, (1e-5, 1.0)) == pytest.approx(10**-1.5)
    assert peers.next_lr({**grid, 1e-4: 0.2}, (1e-5, 1.0)) == pytest.approx(10**-4.5)
    assert peers.next_lr({**grid, 1e-3: 0.2}, (1e-5, 1.0)) is None  # best inside: done
    assert peers.next_lr(grid, (1e-5, 1e-2)) is None  # the range's top reached


def test_rechub_adapter_names_a_missing_feature(tmp_path: Path):
    import json

    from twotower_cli.core.errors import TwoTowerError

    (tmp_path / "schema.json").write_text(json.dumps({"user": [{"name": "user", "vocab_size": 3}],
                                                       "item": []}))  # fmt: skip
    with pytest.raises(TwoTowerError, match=r"schema.json: no feature 'gender'"):
        peers.RechubAdapter(tmp_path, peers.RechubSettings())


def test_device_exact_top_matches_twotowers_exact_search(small):
    enc, parts = small
    seen = pd.concat([parts["train"], parts["valid"]])
    ev = EvalSet.build(parts["test"], seen, enc.n_items)
    items, u = unit_vectors(enc.n_items, 6), unit_vectors(len(ev.users), 7)
    ours = exact_top_unseen(items, u, ev.exclude, 20, enc.n_items)
    assert np.array_equal(gpu.exact_top(items, u, ev.exclude, 20, enc.n_items, "cpu", 16), ours)


def test_bench_gpu_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device cuda needs a CUDA GPU") as err:
        gpu.require_cuda()
    assert "\n" not in str(err.value)


def test_scale_report_keeps_sizes_that_ran_only_some_stages(tmp_path: Path):
    """A size that runs preprocess and sample only (bench/sizes.py's scale_stages): its row
    shows them and "-" for the rest, growth compares each stage over the sizes that ran it."""
    from bench import report

    results = {"scale_sizes": [10, 100], "scale/10/positives": 8, "scale/100/positives": 80}
    for s in report.STAGES:
        results.update({f"scale/10/{s}_s": 1.0, f"scale/10/{s}_rss_gib": 0.5})
    results.update({"scale/10/wall_s": 6.0, "scale/10/peak_rss_gib": 0.5,
                    "scale/10/recall@20": 0.1, "scale/100/preprocess_s": 20.0,
                    "scale/100/sample_s": 10.0, "scale/100/preprocess_rss_gib": 1.9,
                    "scale/100/sample_rss_gib": 0.7, "scale/100/wall_s": 30.0,
                    "scale/100/peak_rss_gib": 1.9})  # fmt: skip
    row = report.scale_table(results)[-1].split(" | ")
    assert row[2:4] == ["20.0", "10.0"] and row[4:8] == ["-"] * 4 and row[-1] == "- |"
    assert report.growth(results) == {"preprocess": 2.0, "sample": 1.0}
    assert report.plot(results, tmp_path / "scale.png") and (tmp_path / "scale.png").stat().st_size
