"""What one client may cost the server (`twotower serve`): the API key, the body size and the
time a body or a request head may take.

`Limits` is ASGI middleware: it answers 431 to a request head over `max_header_bytes`, 401
without a valid key, 413 when Content-Length is over `max_body_bytes` (without reading the
body) or when a body without it grows past the limit while streaming, and 408 when a body
takes longer than `timeout_read`. `guarded_http` is uvicorn's HTTP protocol with a deadline
and a size limit on a request head still arriving, which uvicorn lacks (its keep-alive timer
starts only after a first response).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from twotower_cli.serve.encoding import RequestError

OPEN_PATHS = ("/health",)  # answered without the API key: load balancers' liveness probes


def _reply(status: int, error: str, extra: list | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]  # fmt: skip
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})  # fmt: skip


class Limits:
    """ASGI middleware: head size, API key, body size, body time (see the module docstring).
    A request turned away before its body is read closes its connection (`connection: close`),
    so whatever the client still sends is never drained."""

    def __init__(self, app, max_body_bytes: int, timeout_read: float,
                 max_header_bytes: int = 16_384, api_key: str | None = None) -> None:  # fmt: skip
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.timeout_read = timeout_read
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_header_bytes:  # a complete head; guarded_http stops endless ones
            error = f"headers: larger than {self.max_header_bytes} bytes (serve.max_header_bytes)"
            start, body = _reply(431, error, [(b"connection", b"close")])
            await send(start)
            return await send(body)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            if not self._authorised(headers):
                start, body = _reply(401, "authorization: missing or wrong API key; send "
                                     "`Authorization: Bearer KEY` or `X-API-Key: KEY`",
                                     [(b"www-authenticate", b"Bearer"),
                                      (b"connection", b"close")])  # fmt: skip
                await send(start)
                return await send(body)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            start, body = _reply(413, f"body: larger than {self.max_body_bytes} bytes "
                                 f"(serve.max_body_bytes), got {length.decode(errors='replace')}",
                                 [(b"connection", b"close")])  # fmt: skip
            await send(start)
            return await send(body)
        await self.app(scope, self._counted(receive), send)

    def _authorised(self, headers: dict) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given, self.api_key)

    def _counted(self, receive):
        """`receive` that counts body bytes and enforces the body's deadline."""
        seen = 0
        deadline = time.monotonic() + self.timeout_read
        more = True

        async def counted() -> dict[str, Any]:
            nonlocal seen, more
            if not more:  # the body is in; later calls wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RequestError("body", f"not received within {self.timeout_read:g} s "
                                   "(serve.timeout_read)", status=408) from None  # fmt: skip
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                more = message.get("more_body", False)
                if seen > self.max_body_bytes:
                    raise RequestError("body", f"larger than {self.max_body_bytes} bytes "
                                       "(serve.max_body_bytes)", status=413)  # fmt: skip
            return message

        return counted


def guarded_http(timeout_read: float, max_header_bytes: int) -> type:
    """uvicorn's httptools protocol (h11 when httptools is missing) that closes a connection
    whose request head is not complete within `timeout_read` seconds of the connection opening
    or of the previous response (slow or silent clients), and answers 431 to a head over
    `max_header_bytes`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # pragma: no cover -- httptools is a dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class GuardedHTTP(Base):
        _head_timer = None
        _head_bytes = 0

        def _idle(self) -> bool:  # no request is being answered
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(timeout_read, self._expire)

        def _expire(self) -> None:
            self._head_timer = None
            if self._idle() and not self.transport.is_closing():
                self.transport.close()

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
                    body = b'{"error": "headers: larger than serve.max_header_bytes"}'
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"content-type: application/json\r\nconnection: close\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )  # fmt: skip
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
