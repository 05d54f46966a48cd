"""The out-of-core engine under `twotower preprocess`: DuckDB, bounded by `memory_limit`.

DuckDB streams parquet/csv, and its sorts, joins and aggregates spill to a temp dir when a
log is larger than the memory it is given, so the preprocess of a log of any size runs in
bounded memory (`dataset.engine_memory`, default 1 GB). Its tables live in an in-memory
database whose blocks DuckDB moves to a temp dir when they pass the limit (faster than a
database file: 0.7 s against 1.4 s to store 7.4M rows); the dir goes when the engine closes.
With `preserve_insertion_order` a query without ORDER BY returns a table's rows in the order
they were stored, which the writes of data/preprocess.py rely on.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from twotower_cli.core.errors import ConfigError

ENGINE_MEMORY = "1GB"  # dataset.engine_memory when a dataset config does not say
MEMORY = re.compile(r"^\s*(\d+(\.\d+)?)\s*(KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)
MIN_MEMORY_MB = 16  # below it DuckDB cannot hold one block of a tiny log
OUT_OF_MEMORY = duckdb.OutOfMemoryException  # the engine's limit reached (no spill left)


@dataclass(frozen=True)
class LogFile:
    """A log the engine scans from disk (parquet) instead of a DataFrame in memory."""

    path: Path

    @property
    def rows(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows


def log_rows(log: pd.DataFrame | LogFile) -> int:
    """The rows of a log, in memory or on disk."""
    return log.rows if isinstance(log, LogFile) else len(log)


def check_memory(value: str, key: str = "dataset.engine_memory") -> str:
    """'1GB', '512MB', ... (DuckDB's memory_limit syntax), or a one-line error naming `key`."""
    if not isinstance(value, str) or not MEMORY.match(value):
        raise ConfigError(f"{key}: {value!r} is not a memory size like 1GB or 512MB")
    number, _, unit = MEMORY.match(value).groups()
    power = {"K": 1, "M": 2, "G": 3, "T": 4}[unit[0].upper()]
    base = 1024 if unit.upper().endswith("IB") else 1000
    if float(number) * base**power < MIN_MEMORY_MB * 1000**2:
        raise ConfigError(f"{key}: {value!r} is below the engine's minimum of {MIN_MEMORY_MB}MB")
    return value.strip()


class Engine:
    """A DuckDB connection with a memory limit and a spill dir under `temp_root` (None: the
    system's temp dir); `with Engine(...) as eng:` removes them."""

    def __init__(self, memory: str = ENGINE_MEMORY, temp_root: str | Path | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        self.own_root = temp_root is not None
        if temp_root is not None:
            Path(temp_root).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="engine-", dir=temp_root))
        self.con = duckdb.connect(":memory:")
        self.con.execute(f"SET memory_limit = '{check_memory(memory)}'")
        self.con.execute(f"SET temp_directory = '{self.dir / 'spill'}'")
        self.con.execute("SET preserve_insertion_order = true")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self._frames: dict[str, pd.DataFrame] = {}
        self.labels: pd.Index | None = None  # a DataFrame source's row labels, for errors

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.own_root:  # the temp root too, unless another engine still uses it
            with contextlib.suppress(OSError):
                self.dir.parent.rmdir()

    def source(self, name: str, data: pd.DataFrame | LogFile) -> None:
        """`name` as a view over a DataFrame or a parquet file, with `_row` = the row's
        position in it (the tie-breaker of every stable order)."""
        if isinstance(data, LogFile):
            path = str(data.path).replace("'", "''")
            self.con.execute(
                f"CREATE VIEW {name} AS SELECT * EXCLUDE (file_row_number), "
                f"file_row_number AS _row FROM read_parquet('{path}', file_row_number = true)"
            )
            return
        self.labels = data.index
        self.frame(name, data.assign(_row=np.arange(len(data), dtype=np.int64)))

    def frame(self, name: str, data: pd.DataFrame) -> None:
        """A small DataFrame (a vocabulary map, candidate ids) as table `name`."""
        self._frames[name] = data  # DuckDB scans it in place: keep it alive
        self.con.register(name, data)

    def types(self, relation: str) -> dict[str, str]:
        """{column: SQL type} of a table or view."""
        return {row[0]: row[1] for row in self.con.execute(f"DESCRIBE {relation}").fetchall()}

    def run(self, query: str) -> None:
        self.con.execute(query)

    def table(self, name: str, query: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {query}")

    def one(self, query: str):
        """The first row of a query (a tuple), or None."""
        rows = self.con.execute(query).fetchall()
        return rows[0] if rows else None

    def df(self, query: str) -> pd.DataFrame:
        return self.con.execute(query).df()

    def numpy(self, query: str) -> np.ndarray:
        """A one-column query as a numpy array."""
        return next(iter(self.con.execute(query).fetchnumpy().values()))

    def write(self, query: str, path: Path) -> None:
        """The query's rows, in its order, as a parquet file."""
        target = str(path).replace("'", "''")
        self.con.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet)")

    def label(self, row: int):
        """The name a message gives row `row` of the source: its DataFrame label, else its
        position in the file."""
        if self.labels is None:
            return int(row)
        value = self.labels[int(row)]
        return value.item() if hasattr(value, "item") else value
