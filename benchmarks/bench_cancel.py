"""Cancel benchmark: how long a running import takes to stop after ``Job.cancel()``.

    .venv/bin/python benchmarks/bench_cancel.py [--size-mib 1024] [--runs 5]

One worker (1 process, 1 thread, fsync on, so the copy goes to the disk). Each run imports
a file of ``--size-mib`` MiB, waits until its first progress report, cancels it, and times
``Job.cancel()`` to the record's ``stopped_at`` (the attempt has stopped, its ``.part`` is
removed and its reservation released). The baseline, in the same run: the time one
progress step (``PAGLETS_ARTIFACTS_PROGRESS_EVERY_BYTES``, 4 MiB) takes at the copy's own
rate, from a whole import of the same file timed first.

Uses ``REDIS_URL`` when set (in its own namespace), else an embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paglets_artifacts import ArtifactJobs, Settings  # noqa: E402
from paglets_artifacts.jobs.worker_process import WorkerProcess  # noqa: E402
from paglets_artifacts.redis_server import delete_namespace, redis_url_or_embedded  # noqa: E402
from paglets_artifacts.store.artifacts import ArtifactStore  # noqa: E402


def write_file(path: Path, size: int) -> None:
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as handle:
        left = size
        while left:
            handle.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024

    with redis_url_or_embedded() as url, tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        work = Path(tmp) / "files"
        work.mkdir()
        settings = Settings(
            redis_url=url,
            namespace=f"bench-{uuid.uuid4().hex[:8]}",
            store_root=Path(tmp) / "store",
            allowed_roots=(work,),
            fsync=True,
            quota_bytes=None,
            max_artifact_bytes=0,
        )
        source = work / "large.bin"
        write_file(source, size)
        worker = WorkerProcess(settings=settings, processes=1, threads=1, pythonpath=[ROOT]).start(
            stdout=subprocess.DEVNULL, cwd=ROOT
        )
        jobs = ArtifactJobs(settings=settings)
        store = ArtifactStore.from_settings(settings, redis=jobs.client)
        try:
            started = time.perf_counter()
            whole = jobs.import_file(str(source))
            whole.wait(600)
            record = whole.status()
            copy_seconds = (record.finished_at or 0) - (record.started_at or 0)
            store.remove(uuid.UUID(whole.id).hex)
            step_seconds = copy_seconds * settings.progress_every_bytes / size
            print(
                f"whole import of {args.size_mib} MiB: {copy_seconds:.2f} s "
                f"(enqueue to result {time.perf_counter() - started:.2f} s)"
            )
            latencies = []
            for _ in range(args.runs):
                job = jobs.import_file(str(source))
                while job.status().bytes_done == 0:
                    time.sleep(0.002)
                time.sleep(0.3)  # past the attempt's first cancel-free interval
                asked = time.time()
                job.cancel()
                while (stopped := job.status().stopped_at) is None:
                    time.sleep(0.002)
                latencies.append(stopped - asked)
                left = sorted(path.name for path in store.tmp_dir.iterdir())
                assert not left and store.list() == [], (left, store.list())
            median = statistics.median(latencies)
            print(
                f"cancel to stopped_at over {args.runs} runs: median {median * 1e3:.0f} ms, "
                f"min {min(latencies) * 1e3:.0f} ms, max {max(latencies) * 1e3:.0f} ms"
            )
            print(
                f"baseline, one progress step ({settings.progress_every_bytes >> 20} MiB) at the copy's rate: "
                f"{step_seconds * 1e3:.0f} ms; median / step: {median / step_seconds:.1f}x"
            )
        finally:
            jobs.close()
            worker.terminate()
            worker.wait(timeout=60)
            if os.environ.get("REDIS_URL"):
                import redis

                cleanup = redis.Redis.from_url(url)
                delete_namespace(cleanup, settings.namespace)
                cleanup.close()


if __name__ == "__main__":
    main()
