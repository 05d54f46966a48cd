"""Dynamic batching of single /recommend requests (`twotower serve`).

A request queues its query and awaits a future. Whenever the batcher is free, everything queued
by then is one batch: one forward pass and one faiss search, so under load the tower's fixed
per-call cost is paid once per batch, not once per request (TF-Serving and Triton call this
dynamic batching).

Where a batch runs depends on what it is predicted to cost: a batch that the last batches'
measured time says will take under `inline_seconds` (1 ms) is answered right on the event loop,
like parsing a body, unless another thread computes (a batch request, a reload); anything more
(and every batch of a bundle not measured yet) goes to the batcher's worker thread, while the
event loop keeps accepting and answering other connections.
Why not always the thread: each hand-off is a thread wake-up each way and the two threads
taking the GIL from each other, paid per batch, and on an idle machine batches are small (the
always-threaded server used 0.45 against 0.27 ms of CPU per request: issue 26).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable

from twotower_cli.serve.bundle import ServeState
from twotower_cli.serve.encoding import UserQuery
from twotower_cli.serve.recommend import recommend


def answer_batch(bundle, batch: list[tuple[UserQuery, int]]) -> list[tuple[bool, object]]:
    """(ok, items or exception) per query: the batch together, or, when one query is bad, each
    query alone so that only the bad one fails."""
    try:
        return [(True, r) for r in recommend(bundle, [q for q, _ in batch], [k for _, k in batch])]
    except Exception:  # noqa: BLE001 -- e.g. one bad query: answer each alone
        pass
    out = []
    for query, k in batch:
        try:
            out.append((True, recommend(bundle, [query], k)[0]))
        except Exception as err:  # noqa: BLE001 -- delivered to the request's handler
            out.append((False, err))
    return out


INLINE_SECONDS = 0.001  # a batch predicted to take less runs on the event loop


def batch_units(batch: list[tuple[UserQuery, int]]) -> float:
    """A batch's size in cost units: a query, plus its k items' dicts (k=100 ~ one query)."""
    return sum(1 + k / 100 for _, k in batch)


class MicroBatcher:
    """Single requests that arrive while the worker is busy share its next batch.

    The hand-off is one queue put to the worker thread and one `call_soon_threadsafe` back per
    batch (a `run_in_executor` round trip adds two futures, their locks and callbacks, and one
    more turn of the event loop before the requests see their answers)."""

    def __init__(self, state: ServeState, max_batch: int, inline_seconds: float = INLINE_SECONDS,
                 busy_elsewhere: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        self.state = state
        self.max_batch = max_batch
        self.inline_seconds = inline_seconds
        # whether other threads compute now (heavy requests, a reload): then a batch on the
        # loop would wait for the GIL at each of its C calls (measured: other clients' p99
        # 1,435 ms beside 0.5 s batch requests); it goes to the worker instead
        self.busy_elsewhere = busy_elsewhere
        # (bundle, seconds per unit) measured on that bundle's batches: a reload starts afresh
        self.cost: tuple[object, float] | None = None
        self.pending: list = []
        self.busy = False
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None  # started by the first batch

    def submit(self, query: UserQuery, k: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self.pending and not self.busy:
            loop.call_soon(self._flush)  # a lone request waits for nothing
        fut = loop.create_future()
        self.pending.append((query, k, fut))
        return fut

    def close(self) -> None:
        """Stop the worker thread once it has finished its batch (the server is stopping)."""
        self.jobs.put(None)

    def _flush(self) -> None:
        if self.busy or not self.pending:
            return
        chunk = [p for p in self.pending[: self.max_batch] if not p[2].done()]
        self.pending = self.pending[self.max_batch :]
        if not chunk:  # every client of this chunk went away
            self._flush()
            return
        self.busy = True
        bundle = self.state.bundle  # the whole batch answers from one bundle
        if not self.busy_elsewhere() and self.predicted(bundle, chunk) <= self.inline_seconds:
            self._deliver(chunk, bundle, self._answer(bundle, chunk))
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="micro-batch", daemon=True)
            self.thread.start()
        self.jobs.put((asyncio.get_running_loop(), chunk, bundle))

    def predicted(self, bundle, chunk: list) -> float:
        """Seconds this batch should take by the bundle's measured cost; inf when unmeasured."""
        if self.cost is None or self.cost[0] is not bundle:
            return math.inf
        return self.cost[1] * batch_units([(q, k) for q, k, _ in chunk])

    def _answer(self, bundle, chunk: list) -> list:
        """answer_batch, timed in CPU seconds of the thread that runs it (not wall time, which
        in the worker includes waiting for the GIL while the event loop runs): the estimate
        follows the latest batches."""
        batch = [(q, k) for q, k, _ in chunk]
        start = time.thread_time()
        try:
            results = answer_batch(bundle, batch)
        except Exception as err:  # noqa: BLE001 -- delivered to every request of the batch
            results = [(False, err)] * len(chunk)
        per_unit = (time.thread_time() - start) / batch_units(batch)
        if self.cost is not None and self.cost[0] is bundle:
            per_unit = 0.7 * self.cost[1] + 0.3 * per_unit
        self.cost = (bundle, per_unit)
        return results

    def _work(self) -> None:
        """The worker thread: one batch at a time, so a busy worker means a bigger batch."""
        while (job := self.jobs.get()) is not None:
            loop, chunk, bundle = job
            results = self._answer(bundle, chunk)
            try:
                loop.call_soon_threadsafe(self._deliver, chunk, bundle, results)
            except RuntimeError:  # the loop is closed: the server stopped
                return

    def _deliver(self, chunk: list, bundle, results: list) -> None:
        self.busy = False
        for (_, _, fut), (ok, value) in zip(chunk, results, strict=True):
            if fut.done():  # the client went away
                continue
            if ok:
                fut.set_result((value, bundle))
            else:
                fut.set_exception(value)
        self._flush()
