"""Bad input is one line naming the key, file or value, and a non-zero exit, never a traceback
(issue 26.10): config values, an index that cannot be built, a full disk (Hydra's own writes
included), Ctrl-C before a stage runs, a serve setting given to another stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SMALL, twotower
from helpers import one_line


@pytest.mark.slow
def test_a_bad_serve_value_fails_serve_only(tmp_path: Path, capsys):
    out = tmp_path / "outputs"
    assert twotower("preprocess", *SMALL, f"paths.out={out}", "serve.port=-1") == 0
    capsys.readouterr()
    assert twotower("serve", *SMALL, f"paths.out={out}", "serve.port=-1") == 2
    assert one_line(capsys) == "twotower serve: error: serve.port: must be an integer in " \
                                "1-65535, got -1"  # fmt: skip
