"""`conf/serve/default.yaml` as a checked dataclass (`twotower serve`): a bad value is one line
naming the `serve.` key, before anything loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from twotower_cli.core.errors import ConfigError
from twotower_cli.export.user_tower import RUNTIMES

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# where `api_key: null` looks: an environment variable stays out of `ps` and of the manifests,
# which hold each stage's resolved config
API_KEY_ENV = "TWOTOWER_API_KEY"


@dataclass
class ServeSettings:
    """Where to listen, the request limits, how to run the tower."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 1000
    max_batch: int = 256
    # most items one /recommend/batch answer may hold (users x k): 256 users x k=1000 is a
    # 12 MB answer whose JSON encoding holds the GIL for ~0.4 s, stalling every other client
    max_results: int = 25_600
    # answer concurrent single requests with one forward pass per batch (serve/batching.py)
    micro_batch: bool = True
    # one request is a tiny forward pass: more torch/faiss threads only add hand-off cost
    threads: int = 1
    # threads that answer /recommend/batch, /items/{id}/similar and large bodies, off the loop
    workers: int = 2
    runtime: str = "auto"  # who runs the user tower (user_tower.fast_user_tower)
    log_level: str = "warning"
    # limits: a larger body is answered 413 without being read; a connection must send a
    # request head within timeout_read seconds (and then the body within as many); an idle
    # keep-alive connection closes after timeout_keep_alive; beyond max_connections, 503
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 16_384
    timeout_read: float = 10.0
    timeout_keep_alive: float = 5.0
    max_connections: int = 1024
    # when set, every route but GET /health wants `Authorization: Bearer KEY` or `X-API-Key`;
    # None takes $TWOTOWER_API_KEY when that is set
    api_key: str | None = None
    # host names a request's Host header may carry besides IP literals, `localhost` and `host`
    # (a web page that rebinds its own name to this address sends that name); "*" accepts any
    allowed_hosts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool)
                                               or not isinstance(value, int | float)):  # fmt: skip
                raise ConfigError(f"serve.{f.name}: expected a number, got {value!r}")
        _between("port", self.port, 1, 65535)
        for key in ("max_k", "max_batch", "max_results", "threads", "workers",
                    "max_body_bytes", "max_connections"):  # fmt: skip
            _between(key, getattr(self, key), 1)
        _between("max_header_bytes", self.max_header_bytes, 1024)
        for key in ("timeout_read", "timeout_keep_alive"):
            if not 0 < getattr(self, key) < float("inf"):
                raise ConfigError(f"serve.{key}: must be > 0 seconds, got {getattr(self, key)}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"serve.runtime: {self.runtime!r} not in {RUNTIMES}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"serve.log_level: {self.log_level!r} not in {LOG_LEVELS}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None:
            if isinstance(self.api_key, bool) or not str(self.api_key).strip():
                raise ConfigError("serve.api_key: expected a non-empty string or null")
            self.api_key = str(self.api_key)  # `serve.api_key=1234` arrives as an int
        self.allowed_hosts = _host_names(self.allowed_hosts)

    def check_key_env(self) -> None:
        """Refuse to serve with `$TWOTOWER_API_KEY` set but empty: the key was meant to be on
        and would silently be off. Checked when a server is built (every stage checks the
        settings, and the variable is no business of theirs)."""
        if self.api_key is None and os.environ.get(API_KEY_ENV, "x").strip() == "":
            raise ConfigError(f"${API_KEY_ENV} is set but empty: set the key, or unset the "
                              "variable to serve without one")  # fmt: skip


def _between(key: str, value: float, low: int, high: int | None = None) -> None:
    if int(value) != value or value < low or (high is not None and value > high):
        span = f"an integer in {low}-{high}" if high is not None else f"an integer >= {low}"
        raise ConfigError(f"serve.{key}: must be {span}, got {value}")


def _host_names(names) -> list[str]:
    """`serve.allowed_hosts` as lower-case names (a ListConfig or a list from Python)."""
    if names is None:
        return []
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"serve.allowed_hosts: expected a list of host names, got {names!r}")
    return [n.strip().lower() for n in names]
