"""HTTP API memory benchmark: server RSS while a 1 GiB body streams up and down.

    .venv/bin/python benchmarks/bench_http_memory.py [--size-mib 1024] [--fsync]

Starts ``serve()`` (uvicorn) in its own process on a temporary store, warms it up with a
1 MiB round trip, reads its idle RSS (the baseline), then uploads a ``--size-mib`` body with
``POST /artifacts`` (Content-Length, generated on the fly) and downloads it back with
``GET /artifacts/{id}``, sampling the server's RSS every 20 ms from ``/proc`` (Linux).
Prints the peak of each phase beside the idle baseline, with ratios and throughput.

Uses ``REDIS_URL`` when set, else an embedded Redis (the artifact endpoints do not touch
it; the server is simply configured as it would be in production).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from paglets_artifacts import Settings  # noqa: E402
from paglets_artifacts.redis_server import free_port, redis_url_or_embedded  # noqa: E402

MIB = 1024 * 1024
SERVER = (
    "from paglets_artifacts.http_api import serve; from paglets_artifacts import Settings; import sys; "
    "serve(Settings.from_env(), '127.0.0.1', int(sys.argv[1]), log_level='warning')"
)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class PeakSampler:
    """Samples a process's RSS on a thread; ``peak`` is the largest value seen.

    Parameters:
      pid(int): the process.
      every(float): seconds between samples.
    """

    def __init__(self, pid: int, every: float = 0.02):
        self.pid = pid
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def body(size: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB blocks of one random block (the client holds one block)."""
    block = os.urandom(MIB)
    left = size
    while left:
        piece = block[: min(left, MIB)]
        digest.update(piece)
        left -= len(piece)
        yield piece


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--fsync", action="store_true", help="flush the blob before the upload answers")
    args = parser.parse_args()
    size = args.size_mib * MIB
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        with redis_url_or_embedded() as redis_url:
            port = free_port()
            settings = Settings(
                redis_url=redis_url,
                namespace=f"bench-http-{uuid.uuid4().hex[:8]}",
                store_root=workdir / "store",
                host_url=f"http://127.0.0.1:{port}",
                max_artifact_bytes=size,
                quota_bytes=None,
                fsync=args.fsync,
            )
            env = {**os.environ, **settings.to_env()}
            process = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env, cwd=ROOT)
            try:
                wait_for_port(port, process)
                return run(process.pid, f"http://127.0.0.1:{port}", size, args.fsync)
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(pid: int, url: str, size: int, fsync: bool) -> int:
    with httpx.Client(base_url=url, timeout=600) as client:
        started_rss = rss_bytes(pid)
        # Warm-up: the first request of each kind loads code and allocates its buffers.
        warm = client.post("/artifacts", content=os.urandom(MIB)).json()["artifact"]
        client.get(f"/artifacts/{warm['artifact_id']}").raise_for_status()
        client.delete(f"/artifacts/{warm['artifact_id']}").raise_for_status()
        time.sleep(0.5)
        idle = rss_bytes(pid)

        digest = hashlib.sha256()
        with PeakSampler(pid) as up:
            t0 = time.perf_counter()
            answer = client.post("/artifacts", content=body(size, digest), headers={"Content-Length": str(size)})
            up_seconds = time.perf_counter() - t0
        answer.raise_for_status()
        ref = answer.json()["artifact"]
        assert ref["size_bytes"] == size and ref["sha256"] == digest.hexdigest(), ref

        received = 0
        with PeakSampler(pid) as down:
            t0 = time.perf_counter()
            with client.stream("GET", f"/artifacts/{ref['artifact_id']}") as response:
                response.raise_for_status()
                for chunk in response.iter_raw(MIB):
                    received += len(chunk)
            down_seconds = time.perf_counter() - t0
        assert received == size, (received, size)
        assert response.headers["x-paglets-artifact-sha256"] == digest.hexdigest()

    mib = size / MIB
    print(
        f"HTTP API memory: {mib:.0f} MiB body, uvicorn (h11) + Starlette, loopback, fsync={'on' if fsync else 'off'}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(f"{'phase':<28}{'server RSS MiB':>16}{'vs idle':>10}{'above idle MiB':>16}{'MiB/s':>10}")
    print(
        f"{'server started':<28}{started_rss / MIB:>16.1f}{started_rss / idle:>10.2f}"
        f"{(started_rss - idle) / MIB:>16.1f}{'':>10}"
    )
    print(f"{'idle after warm-up (base)':<28}{idle / MIB:>16.1f}{1.0:>10.2f}{0.0:>16.1f}{'':>10}")
    print(
        f"{'peak while uploading':<28}{up.peak / MIB:>16.1f}{up.peak / idle:>10.2f}"
        f"{(up.peak - idle) / MIB:>16.1f}{mib / up_seconds:>10.0f}"
    )
    print(
        f"{'peak while downloading':<28}{down.peak / MIB:>16.1f}{down.peak / idle:>10.2f}"
        f"{(down.peak - idle) / MIB:>16.1f}{mib / down_seconds:>10.0f}"
    )
    print(
        f"body / idle RSS: {size / idle:.1f}x; peak growth is {(max(up.peak, down.peak) - idle) / MIB:.1f} MiB for a "
        f"{mib:.0f} MiB body"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
