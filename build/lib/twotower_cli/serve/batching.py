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
from concurrent.futures import Executor, ThreadPoolExecutor

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
    """Single requests that arrive while the worker is busy share its next batch."""

    def __init__(self, state: ServeState, max_batch: int, executor: Executor | None = None):
        self.state = state
        self.max_batch = max_batch
        # one thread: batches run one after another, so a busy worker means a bigger batch
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="micro-batch")
        self.pending: list = []
        self.busy = False

    def submit(self, query: UserQuery, k: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self.pending and not self.busy:
            loop.call_soon(self._flush)  # a lone request waits for nothing
        fut = loop.create_future()
        self.pending.append((query, k, fut))
        return fut

    def _flush(self) -> None:
        if self.busy or not self.pending:
            return
        chunk = [p for p in self.pending[: self.max_batch] if not p[2].done()]
        self.pending = self.pending[self.max_batch :]
        if not chunk:  # every client of this chunk went away
            self._flush()
            return
        bundle = self.state.bundle  # the whole batch answers from one bundle
        self.busy = True
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, answer_batch, bundle,
                                    [(q, k) for q, k, _ in chunk])  # fmt: skip
        work.add_done_callback(lambda done: self._deliver(chunk, bundle, done))

    def _deliver(self, chunk: list, bundle, done: asyncio.Future) -> None:
        self.busy = False
        try:
            results = done.result()
        except Exception as err:  # noqa: BLE001 -- e.g. the executor shut down
            results = [(False, err)] * len(chunk)
        for (_, _, fut), (ok, value) in zip(chunk, results, strict=True):
            if fut.done():  # the client went away
                continue
            if ok:
                fut.set_result((value, bundle))
            else:
                fut.set_exception(value)
        self._flush()
