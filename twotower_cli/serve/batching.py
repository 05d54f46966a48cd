"""Dynamic batching of single /recommend requests, answered off the event loop
(`twotower serve`).

A request queues its query and awaits a future. Whenever the batcher's worker thread is free,
everything queued by then goes to it as one batch: one forward pass and one faiss search. While
the worker computes, the event loop keeps accepting, parsing and answering other connections,
and new requests queue for the next batch, so under load the tower's fixed per-call cost is paid
once per batch, not once per request (TF-Serving and Triton call this dynamic batching).
"""

from __future__ import annotations

import asyncio
import queue
import threading

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


class MicroBatcher:
    """Single requests that arrive while the worker is busy share its next batch.

    The hand-off is one queue put to the worker thread and one `call_soon_threadsafe` back per
    batch (a `run_in_executor` round trip adds two futures, their locks and callbacks, and one
    more turn of the event loop before the requests see their answers)."""

    def __init__(self, state: ServeState, max_batch: int) -> None:
        self.state = state
        self.max_batch = max_batch
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
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="micro-batch", daemon=True)
            self.thread.start()
        # the whole batch answers from one bundle
        self.jobs.put((asyncio.get_running_loop(), chunk, self.state.bundle))

    def _work(self) -> None:
        """The worker thread: one batch at a time, so a busy worker means a bigger batch."""
        while (job := self.jobs.get()) is not None:
            loop, chunk, bundle = job
            try:
                results = answer_batch(bundle, [(q, k) for q, k, _ in chunk])
            except Exception as err:  # noqa: BLE001 -- delivered to every request of the batch
                results = [(False, err)] * len(chunk)
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
