"""Open a page in headless Chromium over the DevTools protocol (a pipe, no port): its console
errors (console.error/assert, uncaught exceptions, failed resource loads) and a full-page PNG."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-pipe", "--window-size=1280,1000"]  # fmt: skip


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _as_fds_3_and_4(read_end: int, write_end: int) -> None:
    a, b = os.dup(read_end), os.dup(write_end)  # copies first: either end may be 3 or 4
    os.dup2(a, 3)
    os.dup2(b, 4)


class Pipe:
    """DevTools messages: JSON, each ended by a NUL byte, on fds 3 (to) and 4 (from Chromium)."""

    def __init__(self, binary: str, user_data_dir: str) -> None:
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        # the child must see them as fds 3 and 4
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}"],
            pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _as_fds_3_and_4(to_r, from_w),
            start_new_session=True,  # its own process group: close() ends the helpers too
        )  # fmt: skip
        os.close(to_r)
        os.close(from_w)
        self.buf, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > end:
                raise TimeoutError(method)
            self.events.append(self.read())

    def close(self) -> None:
        try:
            os.write(self.to_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the chromium started here
        self.proc.wait()
        os.close(self.to_w)
        os.close(self.from_r)


def console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            out.append(p["exceptionDetails"].get("text", "exception"))
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(p["entry"]["text"])
    return out


def open_page(path: Path) -> tuple[list[str], bytes]:
    """(console errors, full-page screenshot PNG) of the page at `path`."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH (.ci/run installs the Debian package)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        pipe = Pipe(binary, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session)
            pipe.wait_for("Page.loadEventFired")
            full_page = {"format": "png", "captureBeyondViewport": True}
            shot = pipe.send("Page.captureScreenshot", full_page, session)
            errors = console_errors(pipe.events)
        finally:
            pipe.close()
    return errors, base64.b64decode(shot["data"])
