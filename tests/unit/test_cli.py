"""The front door's own flags: --version, --help (stages and user-facing groups, one line
each), a stage's --help without internal groups, and train.device=auto."""

from __future__ import annotations

import pytest
import torch
from conftest import options, twotower

import twotower_cli
from twotower_cli.cli import GROUPS, STAGES
from twotower_cli.pipeline import config
from twotower_cli.training import distributed


def test_version(capsys):
    assert twotower("--version") == 0
    assert capsys.readouterr().out == f"twotower {twotower_cli.__version__}\n"


def test_help_lists_every_stage_and_group_with_its_options(capsys):
    assert twotower("--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: twotower {preprocess|")
    for stage, line in STAGES.items():
        assert f"  {stage:<11} {line}\n" in out
    for group, line in GROUPS.items():  # one line each: its options, then what it is
        assert f"  {group:<15} {'|'.join(options(group))}: {line}\n" in out
    assert "dssm|multitask|parallel|senet" in out
    assert "_tower" not in out and "schema" not in out


def test_stage_help_hides_internal_groups(capsys):
    assert twotower("run", "--help") == 0
    out = capsys.readouterr().out
    assert f"twotower run: {STAGES['run']}" in out
    assert "_tower" not in out and "schema/" not in out
    assert "dataset " in out and "ml100k" in out


def test_no_stage_is_usage_and_exit_2(capsys):
    assert twotower() == 2
    assert capsys.readouterr().err.startswith("usage: twotower")


def test_device_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == "cpu"
    assert distributed.resolve_backend("auto", "auto") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.resolve_device("auto") == "cuda"
    assert distributed.resolve_backend("auto", "auto") == "nccl"
    assert distributed.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_device_auto_passes_the_check(device):
    config._check_device(device)
