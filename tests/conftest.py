"""Shared fixtures: a private real Redis, per-test namespaces and stores, real workers.

The suite never writes to a Redis it did not start: without ``REDIS_URL`` it starts an
embedded server for the session; with ``REDIS_URL`` every test gets its own key
namespace, and only that namespace's keys are removed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.jobs.worker_process import WorkerProcess
from paglets_artifacts.redis_server import EmbeddedRedis, delete_namespace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"pa-test-{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    try:
        delete_namespace(client, ns)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, namespace: str) -> Settings:
    """Settings for one test: its own store, allowed root ``tmp_path/files``, fast redelivery."""
    files = tmp_path / "files"
    files.mkdir()
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        store_root=tmp_path / "store",
        host_url="http://127.0.0.1:8470",
        allowed_roots=(files.resolve(),),
        fsync=False,
        heartbeat_timeout_ms=2000,
        maintenance_chance=1_000_000,
        min_backoff_ms=100,
        max_backoff_ms=1000,
        progress_every_bytes=1024 * 1024,
    )


@pytest.fixture
def files(settings: Settings) -> Path:
    """The allowed root jobs may read from and write to."""
    return settings.allowed_roots[0]


@pytest.fixture
def jobs(settings: Settings) -> Iterator[ArtifactJobs]:
    client = ArtifactJobs(settings=settings)
    yield client
    client.close()


class Workers:
    """Starts real worker processes (:class:`WorkerProcess`) for a test and stops them after it."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(
        self,
        *,
        processes: int = 1,
        threads: int = 2,
        settings: Settings | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        command = WorkerProcess(
            settings=settings or self.settings,
            processes=processes,
            threads=threads,
            pythonpath=[ROOT],
            extra_env=extra_env,
        )
        with open(self.log_dir / f"worker-{len(self.processes)}.log", "wb") as log:
            process = command.start(stdout=log, cwd=ROOT)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the whole worker (main and worker processes), as a crash would."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        """Kill every worker: by teardown each test has what it asserts on, and a graceful
        stop would only cost time (in-flight messages go with the test's namespace)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(settings, log_dir)
    yield pool
    pool.stop_all()


class ReadOnly:
    """A stream with ``read()`` only (no ``readline``, no ``readinto``) that reads in full,
    like ``LimitedRequestReader``."""

    def __init__(self, data: bytes):
        self._buffer = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


def wait_until(predicate: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


def age_temporary_files(store: object, seconds: float) -> None:
    """Date every file in a store's ``tmp/`` back by ``seconds``: a sweep judges them by the
    real clock (its ``now`` dates artifact expiry only), so this is how a test makes them stale."""
    then = time.time() - seconds
    for path in store.tmp_dir.iterdir():  # type: ignore[attr-defined]
        os.utime(path, (then, then), follow_symlinks=False)


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_big_file(path: Path, size: int) -> str:
    """Real bytes (not a sparse file) written in 8 MiB blocks, memory flat; return their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def workers_store(settings: Settings) -> ArtifactStore:
    """The store as the workers see it: indexed in the same Redis namespace."""
    return ArtifactStore.from_settings(settings, redis=redis.Redis.from_url(settings.redis_url))
