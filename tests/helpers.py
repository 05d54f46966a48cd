"""Helpers shared by a test module's two halves (tests/unit/test_x.py and tests/e2e/test_x.py);
`from helpers import ...` works in both, as tests/ is on sys.path (tests/conftest.py's folder)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
README = (ROOT / "README.md").read_text()
# MovieLens-1M's format in 174 ratings (tests/unit/test_ml1m.py says what it holds)
ML1M_TINY = TESTS / "data" / "ml1m_tiny"
# a two-parameter search space for `twotower tune` (tests/unit/test_tune.py, tests/e2e/...)
TUNE_SPACE = """
sampler: {seed: 0, n_startup_trials: 2}
params:
  model.temperature: choice(0.05, 0.1, 0.2)
  train.lr: tag(log, interval(0.001, 0.01))
"""


def local_client(app):
    """A TestClient as a local caller sends: Host localhost, JSON bodies (the serve tests)."""
    from fastapi.testclient import TestClient

    return TestClient(
        app, base_url="http://localhost", headers={"content-type": "application/json"}
    )


def readme_section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def tune_conf(tmp_path: Path, text: str = TUNE_SPACE, name: str = "tiny") -> Path:
    conf = tmp_path / "conf"
    (conf / "hparams_search").mkdir(parents=True, exist_ok=True)
    (conf / "hparams_search" / f"{name}.yaml").write_text(text)
    return conf
