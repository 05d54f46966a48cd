"""`make loadtest`: start `twotower serve` on 127.0.0.1, drive POST /recommend with concurrent
keep-alive clients for a fixed number of requests (and at most a fixed time), write
`outputs/loadtest.json` (requests_per_s, p50_ms, p99_ms, errors).

    python -m twotower_cli.tools.loadtest [--requests N] [--concurrency C] [--max-seconds S]
                                    [-- hydra overrides for `twotower serve`]

The clients speak minimal HTTP/1.1 over asyncio streams (one connection each) so that the
driver, which shares the machine with the server, costs as little CPU as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from twotower_cli.core.layout import FILES
from twotower_cli.data.tables import load_schema, load_vocabs

HOST = "127.0.0.1"  # loopback only: the load test never leaves this machine
REQUEST_TIMEOUT_S = 10.0  # so a run lasts at most --max-seconds plus this


def request_bodies(prep_dir: Path, n: int, cold_every: int, k: int, seed: int) -> list[bytes]:
    """n request bodies: known users by id; every `cold_every`-th a cold-start profile drawn
    from the run's vocabularies (numeric features at their mean)."""
    rng = np.random.default_rng(seed)
    vocabs = load_vocabs(prep_dir)["user"]
    id_field, *profile = load_schema(prep_dir)["user"]
    ids = vocabs[id_field.name]
    bodies = []
    for i in range(n):
        if cold_every and i % cold_every == cold_every - 1:
            user = {}
            for f in profile:
                values = vocabs[f.name]
                pick = values[rng.integers(len(values))] if f.kind != "numeric" else values[0]
                user[f.name] = [pick] if f.kind == "multihot" else pick
        else:
            user = {"user_id": ids[rng.integers(len(ids))]}
        bodies.append(json.dumps({"user": user, "k": k}).encode())
    return bodies


def _http_request(body: bytes, api_key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (f"POST /recommend HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def _exchange(reader, writer, body: bytes, api_key: str | None = None) -> bool:
    writer.write(_http_request(body, api_key))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    payload = await reader.readexactly(length)
    return status == 200 and payload.startswith(b'{"items": [')


async def _client(port: int, bodies: list[bytes], deadline: float, out: list,
                  api_key: str | None = None) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for body in bodies:
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            # a request that never answers ends this client (an error) instead of the run
            ok = await asyncio.wait_for(_exchange(reader, writer, body, api_key),
                                        REQUEST_TIMEOUT_S)  # fmt: skip
            out.append((time.perf_counter() - start, ok))
    finally:
        writer.close()


async def drive(port: int, bodies: list[bytes], concurrency: int, max_seconds: float,
                api_key: str | None = None) -> dict:  # fmt: skip
    """Send every body once, spread over `concurrency` connections; stop early at the deadline.
    api_key: sent as `Authorization: Bearer` (a server with `serve.api_key` set)."""
    results: list = []
    start = time.perf_counter()
    deadline = start + max_seconds
    shares = [bodies[i::concurrency] for i in range(concurrency)]
    outcomes = await asyncio.gather(
        *(_client(port, share, deadline, results, api_key) for share in shares),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - start
    failed_clients = sum(isinstance(o, BaseException) for o in outcomes)
    lat = np.array([r[0] for r in results]) * 1000
    errors = sum(not r[1] for r in results) + failed_clients
    return {
        "requests": len(results),
        "planned": len(bodies),
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(results) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 3) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
        "max_ms": round(float(lat.max()), 3) if len(lat) else None,
        "errors": int(errors),
        "hit_deadline": len(results) < len(bodies),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"loadtest: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"loadtest: the server did not answer /health within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--cold-every", type=int, default=8, help="every Nth is a cold start")
    parser.add_argument("--preprocess-dir", default="outputs/ml100k/preprocess")
    parser.add_argument("--out", default=str(Path("outputs") / FILES.loadtest))
    parser.add_argument("overrides", nargs="*", help="hydra overrides for `twotower serve`")
    args = parser.parse_args(argv)
    prep_dir = Path(args.preprocess_dir)
    port = _free_port()
    script = Path(sys.executable).with_name("twotower")
    cmd = [str(script), "serve", f"serve.host={HOST}", f"serve.port={port}", *args.overrides]
    # the key the server will want: `serve.api_key=...` among the overrides, else the env var
    keys = [o.split("=", 1)[1] for o in args.overrides if o.startswith("serve.api_key=")]
    api_key = (keys or [os.environ.get("TWOTOWER_API_KEY")])[-1] or None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        health = _wait_healthy(port, proc, timeout=180)
        warm = request_bodies(prep_dir, args.warmup, args.cold_every, args.k, seed=1)
        asyncio.run(drive(port, warm, args.concurrency, 60, api_key))
        load_before = os.getloadavg()
        bodies = request_bodies(prep_dir, args.requests, args.cold_every, args.k, seed=0)
        server_cpu, client_cpu = _cpu_seconds(proc.pid), time.process_time()
        result = asyncio.run(drive(port, bodies, args.concurrency, args.max_seconds, api_key))
        server_cpu = _cpu_seconds(proc.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.update({
        "k": args.k, "cold_start_share": 1 / args.cold_every if args.cold_every else 0.0,
        "run": health["run"], "items": health["items"], "cpu_count": os.cpu_count(),
        # CPU per request: what the numbers above would be on idle cores, roughly
        "server_cpu_ms_per_request": round(server_cpu * 1000 / max(1, result["requests"]), 3),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(1, result["requests"]), 3),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "command": " ".join(["python -m twotower_cli.tools.loadtest", *(argv or sys.argv[1:])]),
    })  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
