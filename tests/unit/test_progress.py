"""progress.bar: tqdm on a terminal, whole lines (or nothing) in a log."""

from __future__ import annotations

import io

from twotower_cli.core.progress import LineBar, bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epochs(stream) -> str:
    b = bar(total=3, desc="train", unit="epoch", file=stream)
    for loss in (0.5, 0.25, 0.125):
        b.set_postfix(loss=f"{loss:.3f}", refresh=False)
        b.update()
    b.close()
    return stream.getvalue()


def test_a_log_gets_one_line_per_update_and_no_carriage_return():
    out = _epochs(io.StringIO())
    lines = out.splitlines()
    assert "\r" not in out and out.endswith("\n")
    assert len(lines) == 3
    for line, (n, loss) in zip(lines, [(1, "0.500"), (2, "0.250"), (3, "0.125")], strict=True):
        assert line.startswith("train:") and f"{n}/3" in line and f"loss={loss}" in line


def test_a_terminal_gets_tqdm_redraws():
    out = _epochs(Terminal())
    assert "\r" in out and "3/3" in out  # redrawn in place (at most every 0.1 s)


def test_a_transient_bar_writes_nothing_to_a_log_and_a_repeat_prints_once():
    stream = io.StringIO()
    for _ in bar(range(50), leave=False, file=stream):
        pass
    assert stream.getvalue() == ""
    b = bar(total=2, file=stream)
    assert isinstance(b, LineBar)
    b.update()
    b.refresh()  # nothing changed: no second line
    b.close()  # neither here
    assert len(stream.getvalue().splitlines()) == 1


def test_a_resumed_bar_starts_without_a_line_of_its_own():
    stream = io.StringIO()
    b = bar(total=5, initial=3, desc="train", file=stream)  # epochs 1-3 done before a crash
    assert stream.getvalue() == ""
    b.update()
    b.close()
    assert [
        line.split("|")[2].split("[")[0].strip() for line in stream.getvalue().splitlines()
    ] == ["4/5"]


def test_a_disabled_bar_takes_postfix_and_updates_silently():
    # what the trainer does on ranks other than 0
    out = io.StringIO()
    b = bar(total=3, desc="train", file=out, disable=True)
    b.set_postfix(loss="1.0", refresh=False)
    b.update()
    b.close()
    assert out.getvalue() == ""
