"""Everything under tests/e2e/ runs the pipeline through the CLI: marked slow, so
`make test-fast` (`pytest -m "not slow"`) leaves it out and `make test` still runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
