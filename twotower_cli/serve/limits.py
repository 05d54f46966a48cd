"""What one client may cost the server (`twotower serve`): the API key, the body size and the
time a body or a request head may take.

`Limits` is ASGI middleware: it answers 431 to a request head over `max_header_bytes`, 421 to
a Host header that is not this server's (DNS rebinding), 401 without a valid key, 415 to a
body that is not declared JSON (a cross-site form or text/plain POST), 413 when
Content-Length is over `max_body_bytes` (without reading the body) or when a body without it
grows past the limit while streaming, and 408 when a body takes longer than `timeout_read`.
`guarded_http` is uvicorn's HTTP protocol with a deadline and a size limit on a request head
still arriving, which uvicorn lacks (its keep-alive timer starts only after a first response).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from typing import Any

from twotower_cli.serve.encoding import RequestError

OPEN_PATHS = ("/health",)  # answered without the API key: load balancers' liveness probes
BODY_METHODS = ("POST", "PUT", "PATCH")
JSON = b"application/json"


def _reply(status: int, error: str, extra: list | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]  # fmt: skip
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})  # fmt: skip


class HostCheck:
    """Whether a request's Host header names this server: an IP literal, `localhost`, or one of
    `names` (serve.host and serve.allowed_hosts; "*" accepts any). A web page that rebinds its
    own DNS name to this address (DNS rebinding) sends that name, so it is refused. A request
    without Host (HTTP/1.0, not a browser) passes."""

    def __init__(self, names: list[str]) -> None:
        self.any = "*" in names
        self.names = {n.lower().encode() for n in names} | {b"localhost"}
        self.seen: set[bytes] = set()  # Host values already accepted (at most 256 kept)

    def __call__(self, host: bytes | None) -> bool:
        if host is None or self.any or host in self.seen:
            return True
        name = host.strip().lower()
        if name.startswith(b"["):  # [v6]:port
            name = name[1:].split(b"]", 1)[0]
        elif name.count(b":") == 1:
            name = name.split(b":", 1)[0]
        name = name.rstrip(b".")
        ok = name in self.names or _ip_literal(name)
        if ok and len(self.seen) < 256:
            self.seen.add(host)
        return ok


def _ip_literal(name: bytes) -> bool:
    try:
        ipaddress.ip_address(name.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


class Limits:
    """ASGI middleware: head size, Host, API key, content type, body size, body time (see the
    module docstring). A request turned away before its body is read closes its connection
    (`connection: close`), so whatever the client still sends is never drained."""

    def __init__(self, app, max_body_bytes: int, timeout_read: float,
                 max_header_bytes: int = 16_384, api_key: str | None = None,
                 hosts: HostCheck | None = None) -> None:  # fmt: skip
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.timeout_read = timeout_read
        self.api_key = api_key.encode() if api_key else None
        self.hosts = hosts or HostCheck([])
        self.deadlines = Deadlines()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            start, body = refusal
            await send(start)
            return await send(body)
        await self.app(scope, self._counted(receive), send)

    def _refusal(self, scope: dict) -> tuple[dict, dict] | None:
        """The answer to a request turned away on its head alone, else None."""
        close = [(b"connection", b"close")]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_header_bytes:  # a complete head; guarded_http stops endless ones
            error = f"headers: larger than {self.max_header_bytes} bytes (serve.max_header_bytes)"
            return _reply(431, error, close)
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if not self.hosts(host):
            return _reply(421, f"host: {host.decode(errors='replace')[:100]!r} is not a name "
                          "of this server; add it to serve.allowed_hosts", close)  # fmt: skip
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            if not self._authorised(headers):
                return _reply(401, "authorization: missing or wrong API key; send "
                              "`Authorization: Bearer KEY` or `X-API-Key: KEY`",
                              [(b"www-authenticate", b"Bearer"), *close])  # fmt: skip
        if scope["method"] in BODY_METHODS:
            kind = headers.get(b"content-type", b"")
            if kind != JSON and kind.split(b";", 1)[0].strip().lower() != JSON:
                got = kind.decode(errors="replace")[:100] or "none"
                return _reply(415, f"content-type: must be application/json, got {got!r}",
                              close)  # fmt: skip
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return _reply(413, f"body: larger than {self.max_body_bytes} bytes "
                          f"(serve.max_body_bytes), got {length.decode(errors='replace')}",
                          close)  # fmt: skip
        return None

    def _authorised(self, headers: dict) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given, self.api_key)

    def _counted(self, receive):
        """`receive` that counts body bytes and enforces the body's deadline."""
        seen = 0
        task = asyncio.current_task()
        deadline = asyncio.get_running_loop().time() + self.timeout_read
        more = True

        async def counted() -> dict[str, Any]:
            nonlocal seen, more
            if not more:  # the body is in; later calls wait for a disconnect
                return await receive()
            watch = self.deadlines
            watch.add(task, deadline)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not watch.expired(task):  # cancelled by someone else: not ours to answer
                    raise
                raise RequestError("body", f"not received within {self.timeout_read:g} s "
                                   "(serve.timeout_read)", status=408) from None  # fmt: skip
            finally:
                watch.discard(task)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                more = message.get("more_body", False)
                if seen > self.max_body_bytes:
                    raise RequestError("body", f"larger than {self.max_body_bytes} bytes "
                                       "(serve.max_body_bytes)", status=413)  # fmt: skip
            return message

        return counted


class Deadlines:
    """The body deadlines of the requests now waiting for body bytes, watched by one timer for
    all of them. asyncio.timeout_at per request (a Timeout object, a timer started and
    stopped) made the limits cost 5.9 us a request, 3.5 with this (measured, issue 26.12). A
    request past its deadline has its task cancelled, and `expired` tells its receive why."""

    def __init__(self) -> None:
        self.waiting: dict[asyncio.Task, float] = {}
        self.late: set[asyncio.Task] = set()
        self.timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    def add(self, task: asyncio.Task, deadline: float) -> None:
        self.waiting[task] = deadline
        loop = task.get_loop()
        # every deadline is now + timeout_read: a later one never needs the timer sooner
        if self.timer is None or self.timer[0] is not loop:
            self.timer = (loop, loop.call_at(deadline, self._check, loop))

    def discard(self, task: asyncio.Task) -> None:
        self.waiting.pop(task, None)
        self.late.discard(task)

    def expired(self, task: asyncio.Task) -> bool:
        """Whether `task` was cancelled for its deadline (and takes that cancellation back)."""
        if task not in self.late:
            return False
        task.uncancel()
        return True

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = loop.time()
        for task, deadline in list(self.waiting.items()):
            if task.get_loop() is loop and deadline <= now:
                del self.waiting[task]
                self.late.add(task)
                task.cancel()
        mine = [d for t, d in self.waiting.items() if t.get_loop() is loop]
        if mine:
            self.timer = (loop, loop.call_at(min(mine), self._check, loop))


_431 = b'{"error": "headers: larger than serve.max_header_bytes"}'
# guarded_http's answer to a head still arriving past max_header_bytes
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_431), _431)
)


def guarded_http(timeout_read: float, max_header_bytes: int) -> type:
    """uvicorn's httptools protocol (h11 when httptools is missing) that closes a connection
    whose request head is not complete within `timeout_read` seconds of the connection opening
    or of the previous response (slow or silent clients), and answers 431 to a head over
    `max_header_bytes`. One head timer per connection, not per request: a response moves
    `_deadline`, and the timer, firing early, waits out the rest."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # pragma: no cover -- httptools is a dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class GuardedHTTP(Base):
        _head_timer = None
        _deadline = 0.0
        _head_bytes = 0

        def _idle(self) -> bool:  # no request is being answered
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._head_bytes = 0
            self._deadline = self.loop.time() + timeout_read
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(self._deadline, self._expire)

        def _expire(self) -> None:
            self._head_timer = None  # answering a request: its response arms it again
            if not self._idle() or self.transport.is_closing():
                return
            if self.loop.time() >= self._deadline:
                return self.transport.close()
            self._head_timer = self.loop.call_at(self._deadline, self._expire)  # moved since

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            idle = self._idle()
            super().data_received(data)
            if not idle or self.transport.is_closing():
                return
            if not self._idle():  # this data completed a request head
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    self.transport.write(HEAD_TOO_LARGE)
                    self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return GuardedHTTP
