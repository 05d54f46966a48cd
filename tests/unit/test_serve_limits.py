"""`twotower serve`'s limits (issue 18): body size, API key, read deadlines, request heads,
settings checked before loading, no absolute paths in /health, heavy requests off the event
loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from conftest import SMALL, twotower

from twotower_cli import serve
from twotower_cli.core.errors import TwoTowerError

USER = json.dumps({"user": {"age": 1}, "k": 3}).encode()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["serve.port=70001"], "serve.port: must be an integer in 1-65535, got 70001"),
        (["serve.port=0"], "serve.port: must be an integer in 1-65535, got 0"),
        (["serve.max_body_bytes=0"], "serve.max_body_bytes: must be an integer >= 1, got 0"),
        (["serve.timeout_read=-1"], "serve.timeout_read: must be > 0 seconds, got -1"),
        # a type is the schema's (core/settings.py), refused as Hydra composes
        (
            ["serve.workers=two"],
            "serve.workers: Value 'two' of type 'str' could not be converted to Integer",
        ),
        (["serve.runtime=gpu"], "serve.runtime: 'gpu' not in"),
    ],
)
def test_bad_serve_settings_are_one_line_errors_before_loading(tmp_path, capsys, overrides,
                                                              message):  # fmt: skip
    # no run exists under this paths.out: the settings are checked before the bundle loads
    assert twotower("serve", *SMALL, f"paths.out={tmp_path}", *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_api_key_comes_from_the_environment_when_the_config_has_none(monkeypatch):
    monkeypatch.setenv("TWOTOWER_API_KEY", "from-env")
    assert serve.ServeSettings().api_key == "from-env"
    assert serve.ServeSettings(api_key="given").api_key == "given"
    assert serve.ServeSettings(api_key=1234).api_key == "1234"  # `serve.api_key=1234`
    monkeypatch.delenv("TWOTOWER_API_KEY")
    assert serve.ServeSettings().api_key is None
    with pytest.raises(TwoTowerError, match="serve.api_key: expected a non-empty string"):
        serve.ServeSettings(api_key=" ")


def test_body_deadline_reads_in_the_request_s_own_task():
    # issue 26.12: asyncio.wait_for ran every receive() in a task of its own (~9 us of the
    # ~16 us the limits cost a request, measured); asyncio.timeout_at keeps the one task
    from twotower_cli.serve.limits import Limits

    seen = {}

    async def receive():
        seen["receive"] = asyncio.current_task()
        return {"type": "http.request", "body": USER, "more_body": False}

    async def app(scope, receive, send):
        seen["app"] = asyncio.current_task()
        assert (await receive())["body"] == USER

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/recommend", "raw_path": b"/recommend",
             "query_string": b"", "headers": [(b"host", b"localhost"),
                                              (b"content-type", b"application/json")]}  # fmt: skip
    asyncio.run(Limits(app, 1000, 5.0)(scope, receive, send))
    assert seen["receive"] is seen["app"]


def test_one_timer_watches_every_body_deadline():
    # issue 26.12: one timer for all requests' body deadlines (asyncio.timeout_at per request
    # made the limits 5.9 us a request, 3.5 with one timer). Three stalled bodies, 0.1 s
    # apart, with timeout_read=0.3: each gets its 408 at its own deadline (the timer moves on
    # to the next), a complete one 200
    from twotower_cli.serve.limits import Limits

    answered = {}

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def post(name: str, delay: float, stall: bool) -> None:
        await asyncio.sleep(delay)
        start = time.monotonic()

        async def receive():
            if stall:
                await asyncio.sleep(3600)
            return {"type": "http.request", "body": USER, "more_body": False}

        async def send(message):
            answered.setdefault(name, (message["status"], time.monotonic() - start))

        scope = {"type": "http", "method": "POST", "path": "/recommend", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")]}  # fmt: skip
        try:
            await limits(scope, receive, send)
        except serve.RequestError as err:
            answered[name] = (err.status, time.monotonic() - start)

    async def main():
        posts = asyncio.gather(post("a", 0, True), post("b", 0.1, True),
                               post("ok", 0.15, False), post("c", 0.2, True))  # fmt: skip
        with contextlib.suppress(TimeoutError):  # a deadline missed: the asserts say which
            await asyncio.wait_for(posts, 2)
        return limits.deadlines

    limits = Limits(app, 1000, 0.3)
    deadlines = asyncio.run(main())
    assert {n: s for n, (s, _) in answered.items()} == {"a": 408, "b": 408, "ok": 200, "c": 408}
    assert all(0.29 < took < 0.45 for n, (_, took) in answered.items() if n != "ok"), answered
    assert deadlines.waiting == {} and deadlines.late == set()
