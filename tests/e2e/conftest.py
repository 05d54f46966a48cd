"""Everything under tests/e2e/ runs the pipeline through the CLI: marked slow, so
`make test-fast` (`pytest -m "not slow"`) leaves it out and `make test` still runs it.

The modules in SERIAL are also marked serial: `make test` runs them last, in one process, because
they time themselves against deadlines that a neighbouring test could make them miss. Everything
else runs on every core (pytest-xdist)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SERIAL = {
    "test_serve_limits.py",  # live servers with sub-second read deadlines, timed from outside
    "test_distributed.py",  # two gloo ranks; a kill must end within train.dist_timeout_s
    "test_dist_resume.py",  # two gloo ranks killed and resumed within their collective timeouts
    "test_bench.py",  # its dist section runs two gloo ranks against the clock
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
            if item.path.name in SERIAL:
                item.add_marker(pytest.mark.serial)
