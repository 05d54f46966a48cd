"""README for a newcomer: its own-data example runs as written, and every figure in its results
table is one that docs/results.md traces to a command."""

from __future__ import annotations

import re

from helpers import README, ROOT, readme_section


def test_readme_opens_with_the_two_commands_own_data_and_results():
    titles = re.findall(r"(?m)^## (.+)$", README)
    assert titles[:3] == ["Two commands on a fresh machine (Python 3.11)",
                          "Your own data in ten lines", "Results"]  # fmt: skip
    assert "make run" in readme_section(titles[0]) and "make test" in readme_section(titles[0])
    assert not re.search(r"\b[0-9a-f]{7}\b(?= \(| before| after)", README)  # no commit ids


def test_every_headline_figure_is_traced_in_docs():
    results = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    table = readme_section("Results").split("### ")[0]
    figures = re.findall(r"\b0\.\d{4}\b", table)
    assert len(figures) >= 10
    for figure in figures:
        assert figure in results, figure
    for row in (r for r in table.splitlines() if r.startswith("| ") and "`" in r):
        assert re.search(r"`(make |twotower )", row), row  # each row names its command
