"""Idle and slow uploaders against ``paglets-artifacts serve``: what they hold, how long.

    .venv/bin/python benchmarks/bench_slow_clients.py [--idle-seconds 30] [--min-rate 1024]

Starts ``paglets-artifacts serve`` in its own process on a temporary store with the default
quota (10 GiB), artifact cap (1 GiB) and upload limits, except the idle window and the
minimum rate given here. Then, from this process over loopback:

1. baseline: a 1 MB upload with nothing else going on;
2. ten connections from 127.0.0.1 that each declare ``Content-Length: 1073741824`` (the
   whole quota between them) and send nothing: the index's used figure while they are
   open, how long a 1 MB upload takes meanwhile from 127.0.0.2 and from 127.0.0.1, and
   when the server cut each of them (408);
3. 64 connections from 127.0.0.1 that send headers and then nothing, then an upload from
   127.0.0.2 and one from 127.0.0.1: how long each waited and what it was answered (the
   per-client limit, 8 by default, leaves the other address its slots; the same address
   waits behind its idle uploads, at most the slot wait, then gets 503 + Retry-After).

Prints one line per figure. Uses ``REDIS_URL`` when set, else an embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from paglets_artifacts import ArtifactStore, Settings  # noqa: E402
from paglets_artifacts.redis_client import connect_redis  # noqa: E402
from paglets_artifacts.redis_server import delete_namespace, free_port, redis_url_or_embedded  # noqa: E402

GiB = 1024**3
SERVE = [sys.executable, "-c", "from paglets_artifacts.cli import main; main()", "serve", "--host", "127.0.0.1"]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


class Idle:
    """A connection that sent an upload's headers and nothing more; ``answered`` is when
    (seconds after ``opened``) the server answered, and ``status`` with what."""

    def __init__(self, port: int, length: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.sendall(b"POST /artifacts HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
        self.opened = time.monotonic()
        self.answered: float | None = None
        self.status = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        self.answered = time.monotonic() - self.opened
        if data.startswith(b"HTTP/1.1 "):
            self.status = int(data.split(b" ", 2)[1])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self.sock.close()


def timed_upload(url: str, size: int = 1_000_000, *, source: str = "127.0.0.1") -> tuple[float, int]:
    """A ``size``-byte upload from the client address ``source``: (seconds, status)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, timeout=600, transport=transport) as client:
        started = time.monotonic()
        answer = client.post("/artifacts", content=os.urandom(size))
        return time.monotonic() - started, answer.status_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="PAGLETS_ARTIFACTS_UPLOAD_IDLE_SECONDS")
    parser.add_argument("--min-rate", type=int, default=1024, help="PAGLETS_ARTIFACTS_UPLOAD_MIN_BYTES_PER_SECOND")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    try:
        with redis_url_or_embedded() as redis_url:
            port = free_port()
            settings = Settings(
                redis_url=redis_url,
                namespace=f"bench-slow-{uuid.uuid4().hex[:8]}",
                store_root=workdir / "store",
                host_url=f"http://127.0.0.1:{port}",
                fsync=False,
                upload_idle_seconds=args.idle_seconds,
                upload_min_bytes_per_second=args.min_rate,
            )
            env = {**os.environ, **settings.to_env()}
            process = subprocess.Popen(
                [*SERVE, "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            client = connect_redis(Settings(redis_url=redis_url))
            try:
                wait_for_port(port, process)
                return run(settings, client, port)
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                delete_namespace(client, settings.namespace)
                client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(settings: Settings, client: redis.Redis, port: int) -> int:
    url = f"http://127.0.0.1:{port}"
    store = ArtifactStore.from_settings(settings, redis=client)
    print(
        f"paglets-artifacts serve, loopback, {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
        f"quota {store.quota_bytes / GiB:.0f} GiB, idle window {settings.upload_idle_seconds:g} s, "
        f"min rate {settings.upload_min_bytes_per_second} B/s, {settings.uploads_per_client} uploads per client, "
        f"slot wait {settings.upload_slot_wait_seconds:g} s"
    )
    seconds, status = timed_upload(url)
    print(f"baseline 1 MB upload: {status} in {seconds * 1000:.0f} ms")

    quota_takers = [Idle(port, GiB) for _ in range(10)]
    deadline = time.monotonic() + 10
    while len(list(store.tmp_dir.glob("*.part"))) < settings.uploads_per_client and time.monotonic() < deadline:
        time.sleep(0.05)
    admitted = len(list(store.tmp_dir.glob("*.part")))
    print(
        f"10 idle uploads declaring 1 GiB each: {admitted} admitted, index used {store.index.used_bytes() / 2**20:.0f} "
        "MiB "
        f"with {sum(p.stat().st_size for p in store.tmp_dir.glob('*.part'))} bytes on disk"
    )
    seconds, status = timed_upload(url, source="127.0.0.2")
    print(f"  a 1 MB upload from 127.0.0.2 meanwhile: {status} in {seconds * 1000:.0f} ms")
    seconds, status = timed_upload(url)
    print(f"  a 1 MB upload from 127.0.0.1 (the idle ones' address) meanwhile: {status} after {seconds:.1f} s")
    for idle in quota_takers:
        idle.join(settings.upload_idle_seconds * 4 + 30)
    cut = sorted(idle.answered or -1 for idle in quota_takers)
    print(
        f"  the 10 answered {sorted({idle.status for idle in quota_takers})} after {cut[0]:.1f} to {cut[-1]:.1f} s; "
        f"then {len(list(store.tmp_dir.glob('*.part')))} .part, {store.index.figures()['reservations']} reservations"
    )

    slot_takers = [Idle(port, 100_000) for _ in range(64)]
    time.sleep(0.5)
    seconds, status = timed_upload(url, source="127.0.0.2")
    print(f"64 idle uploaders from 127.0.0.1, then a 65th upload from 127.0.0.2: {status} after {seconds:.2f} s")
    seconds, status = timed_upload(url)
    print(f"  and one from 127.0.0.1 (behind the idle ones): {status} after {seconds:.1f} s")
    for idle in slot_takers:
        idle.join(settings.upload_idle_seconds * 20 + 60)
    statuses: dict[int, int] = {}
    for idle in slot_takers:
        statuses[idle.status] = statuses.get(idle.status, 0) + 1
    cut = sorted(idle.answered or -1 for idle in slot_takers)
    print(
        f"  the 64 answered {statuses} after {cut[0]:.1f} to {cut[-1]:.1f} s; "
        f"then {len(list(store.tmp_dir.glob('*.part')))} .part, {store.index.figures()['reservations']} reservations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
