"""Progress bars fit for a terminal and for a log: `bar(...)` is tqdm on a terminal; when the
stream is not a terminal (CI, `> log.txt`, a pipe) a kept bar writes one whole line per update
(the trainer's: one per epoch) and a transient bar (`leave=False`) writes nothing, so a log holds
no carriage-return redraws."""

from __future__ import annotations

import sys

from tqdm import tqdm


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LineBar(tqdm):
    """tqdm that prints its bar as a new line at each update instead of redrawing it; an
    update that changes neither the count nor the postfix prints nothing."""

    def __init__(self, *args, **kwargs) -> None:
        self._printed: tuple | None = None
        kwargs.setdefault("mininterval", 0.0)
        super().__init__(*args, **kwargs)
        self._printed = (self.n, self.postfix)  # the start (`initial`) is no line of its own

    def display(self, msg=None, pos=None) -> bool:
        key = (self.n, self.postfix)
        if self._printed is None or key == self._printed:
            return True
        self._printed = key
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if self.disable:
            return
        self.display()  # the last state, if an update did not print it yet
        self.disable = True
        self._decr_instances(self)


def bar(iterable=None, *, leave: bool = True, file=None, **kwargs) -> tqdm:
    """A progress bar writing to `file` (default stderr): tqdm on a terminal, LineBar (kept
    bars) or nothing (transient bars) elsewhere."""
    file = sys.stderr if file is None else file
    if is_terminal(file):
        return tqdm(iterable, leave=leave, file=file, **kwargs)
    if not leave or kwargs.get("disable"):  # a disabled LineBar would lack tqdm's state
        kwargs["disable"] = True
        return tqdm(iterable, leave=leave, file=file, **kwargs)
    return LineBar(iterable, leave=True, file=file, **kwargs)
