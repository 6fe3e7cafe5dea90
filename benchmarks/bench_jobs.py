"""Job system benchmark: the host's request-path cost, and small-job throughput.

    .venv/bin/python benchmarks/bench_jobs.py [--calls 2000] [--jobs 400] [--threads 8]

1. Enqueue cost of ``ArtifactJobs.import_file`` for a 1 KiB and a 1 GiB file (median and
   p99 over ``--calls`` calls, no worker running): it must not depend on the file size.
2. Throughput of small (1 KiB) import jobs, enqueue to result, beside a no-op job kind on
   the same broker, middleware, job records and worker settings, as a ratio.

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

import redis  # noqa: E402

from benchmarks.noop_actor import NOOP  # noqa: E402
from paglets_artifacts import ArtifactJobs, Settings  # noqa: E402
from paglets_artifacts.jobs.worker_process import WorkerProcess  # noqa: E402
from paglets_artifacts.redis_client import connect_redis  # noqa: E402
from paglets_artifacts.redis_server import delete_namespace, redis_url_or_embedded  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_file(path: Path, size: int) -> None:
    block = os.urandom(min(size, 8 * 1024 * 1024))
    with open(path, "wb") as handle:
        left = size
        while left:
            handle.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def time_enqueues(jobs: ArtifactJobs, path: Path, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        jobs.import_file(str(path))
        samples.append(time.perf_counter() - start)
    return samples


def wait_all(client: redis.Redis, jobs: ArtifactJobs, ids: list[str], timeout: float = 600) -> None:
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs did not finish")
        pipe = client.pipeline(transaction=False)
        for job_id in pending:
            pipe.hget(jobs.records.key(job_id), "state")
        states = pipe.execute()
        failed = [s for s in states if s == b"failed"]
        if failed:
            raise RuntimeError(f"{len(failed)} benchmark jobs failed")
        pending = [job_id for job_id, state in zip(pending, states, strict=True) if state != b"succeeded"]
        time.sleep(0.01)


def throughput(settings: Settings, work: Path, count: int, threads: int, enqueue) -> float:
    command = WorkerProcess(
        settings=settings,
        processes=1,
        threads=threads,
        modules=["benchmarks.noop_actor"],
        environ={**os.environ, "PYTHONPATH": ""},
        pythonpath=[ROOT],
    )
    worker = command.start(stdout=subprocess.DEVNULL, cwd=ROOT)
    jobs = ArtifactJobs(settings=settings)
    try:
        warm = [enqueue(jobs, i).id for i in range(20)]  # worker boot and first connections
        wait_all(jobs.client, jobs, warm)
        start = time.perf_counter()
        ids = [enqueue(jobs, i).id for i in range(count)]
        wait_all(jobs.client, jobs, ids)
        return count / (time.perf_counter() - start)
    finally:
        jobs.close()
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    with redis_url_or_embedded() as url, tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        work = Path(tmp) / "files"  # the allowed root: beside the store, never around it
        work.mkdir()
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        settings = Settings(
            redis_url=url,
            namespace=namespace,
            store_root=Path(tmp) / "store",
            allowed_roots=(work,),
            fsync=False,
            quota_bytes=None,
        )
        small, large = work / "small.bin", work / "large.bin"
        write_file(small, 1024)
        write_file(large, 1024**3)
        print(f"redis: {url.split('@')[-1]}  namespace: {namespace}")

        with ArtifactJobs(settings=settings) as jobs:
            for _ in range(200):  # warm-up: connections, script cache
                jobs.import_file(str(small))
            results = {}
            for label, path in (("1 KiB", small), ("1 GiB", large)):
                samples = time_enqueues(jobs, path, args.calls)
                results[label] = samples
            print("\n1. Request-path cost of ArtifactJobs.import_file (no worker running)")
            print(f"{'file':>8} {'calls':>6} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
            for label, samples in results.items():
                print(
                    f"{label:>8} {len(samples):>6} {statistics.median(samples) * 1e3:>10.3f} "
                    f"{percentile(samples, 0.99) * 1e3:>8.3f} {max(samples) * 1e3:>8.3f}"
                )
            ratio = statistics.median(results["1 GiB"]) / statistics.median(results["1 KiB"])
            print(f"median ratio 1 GiB / 1 KiB: {ratio:.2f}x (size-independent: ~1.0)")
            delete_namespace(jobs.client, namespace)

        files = []
        for i in range(args.jobs + 20):
            path = work / f"in-{i}.bin"
            path.write_bytes(os.urandom(1024))
            files.append(path)
        imports = throughput(
            settings.with_changes(namespace=namespace + "-imp"),
            work,
            args.jobs,
            args.threads,
            lambda jobs, i: jobs.import_file(str(files[i % len(files)])),
        )
        noops = throughput(
            settings.with_changes(namespace=namespace + "-noop"),
            work,
            args.jobs,
            args.threads,
            lambda jobs, i: jobs.enqueue(NOOP),
        )
        print(f"\n2. Throughput, enqueue to result, 1 worker process x {args.threads} threads, {args.jobs} jobs")
        print(f"{'job':>18} {'jobs/s':>8}")
        print(f"{'no-op (baseline)':>18} {noops:>8.1f}")
        print(f"{'import 1 KiB':>18} {imports:>8.1f}")
        print(f"import / no-op: {imports / noops:.2f}x")
        cleanup = connect_redis(Settings(redis_url=url))
        for ns in (namespace + "-imp", namespace + "-noop"):
            delete_namespace(cleanup, ns)
        cleanup.close()


if __name__ == "__main__":
    main()
