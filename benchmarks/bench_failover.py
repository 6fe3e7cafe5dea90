"""Redis Sentinel failover under load: how long work stops, and what is lost or duplicated.

A master, a replica and three Sentinels on loopback (``tests/sentinels.py``), workers and
the scheduler on the Sentinel URL, a host thread enqueueing small imports (and exports of
imported artifacts) without pause. Each round SIGKILLs the current master, and measures

- *promotion*: from the kill until a majority of Sentinels name the replica;
- *first completion*: from the kill until the first job whose end was written to the new
  master (its record's ``finished_at`` after the kill, read through the Sentinel URL);

then starts the old master again, empty, as a replica of the new one. After the rounds the
load stops, reconciliation runs until no record is unfinished, and the run counts

- messages lost and found by reconciliation (jobs it re-enqueued or failed);
- jobs unfinished at the end (must be 0), records Redis forgot whole;
- duplicated effects: succeeded imports without exactly their one artifact, artifacts of
  no import, a quota figure that differs from the blobs' bytes after the reindex (must be 0).

    .venv/bin/python benchmarks/bench_failover.py --failovers 5
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from sentinels import Load, SentinelCluster  # noqa: E402

from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings  # noqa: E402
from paglets_artifacts.jobs.records import FAILED, FINAL_STATES, SUCCEEDED  # noqa: E402
from paglets_artifacts.jobs.worker_process import WorkerProcess  # noqa: E402


def first_completion_after(jobs: ArtifactJobs, moment: float, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for record in jobs.jobs(limit=200):
                if record.finished_at is not None and record.finished_at > moment:
                    return time.time()
        except redis.RedisError:
            pass
        time.sleep(0.01)
    raise RuntimeError("no job completed after the failover")


def run(failovers: int, workers_count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp, SentinelCluster() as cluster:
        base = Path(tmp)
        files = base / "files"
        files.mkdir()
        settings = Settings(
            redis_url=cluster.url,
            namespace=f"bench-failover-{uuid.uuid4().hex[:8]}",
            store_root=base / "store",
            allowed_roots=(files.resolve(),),
            fsync=False,
            heartbeat_timeout_ms=2000,
            min_backoff_ms=200,
            max_backoff_ms=1000,
            sweep_schedule="1",
            reconcile_schedule="2",
            reconcile_grace_seconds=3.0,
            transfer_time_limit_seconds=30.0,
            maintenance_time_limit_seconds=30.0,
            redis_timeout_seconds=2.0,
        )
        logs = base / "logs"
        logs.mkdir()
        processes = []
        for n in range(workers_count):
            command = WorkerProcess(
                settings=settings,
                processes=1,
                threads=4,
                pythonpath=[ROOT],
                extra_env={"dramatiq_restart_delay": "300"},
            )
            with open(logs / f"worker-{n}.log", "wb") as out:
                processes.append(command.start(stdout=out, cwd=ROOT))
        env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
        with open(logs / "scheduler.log", "wb") as out:
            scheduler = subprocess.Popen(
                [sys.executable, "-m", "workers.scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        jobs = ArtifactJobs(settings=settings)
        load = Load(settings, files, pause_seconds=0.01)
        promotions, completions = [], []
        try:
            load.thread.start()
            while len(load.imports) < 20:
                time.sleep(0.05)
            for _ in range(failovers):
                time.sleep(2.0)
                old, _new, killed_at = cluster.fail_over()
                promotions.append(time.time() - killed_at)
                completions.append(first_completion_after(jobs, killed_at) - killed_at)
                cluster.rejoin(old)
            load.stop.set()
            load.thread.join(30)
            deadline = time.monotonic() + 120
            while True:
                records = jobs.jobs(limit=1_000_000)
                left = [record for record in records if record.state not in FINAL_STATES]
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            jobs.reindex().wait(120)
            records = {record.id: record for record in jobs.jobs(limit=1_000_000)}
            reconciled = [r.result for r in records.values() if r.kind == "reconcile" and r.result]
            found_lost = sum(result["requeued"] + result["failed"] for result in reconciled)
            failed_lost = sum(result["failed"] for result in reconciled)
            imports = {job_id: r for job_id, r in records.items() if r.kind == "import"}
            store = ArtifactStore.from_settings(settings, redis=jobs.client)
            on_disk = {ref.artifact_id for ref in store.list()}
            succeeded = {uuid.UUID(job_id).hex for job_id, r in imports.items() if r.state == SUCCEEDED}
            known = {uuid.UUID(job_id).hex for job_id in [*imports, *load.imports]}
            duplicated = (
                len(succeeded - on_disk)
                + len(on_disk - known)
                + int(store.index.used_bytes() != store.layout.blob_bytes())
            )
            return {
                "promotion": promotions,
                "first_completion": completions,
                "imports": len(load.imports),
                "exports": len(load.exports),
                "found_lost": found_lost,
                "failed_lost": failed_lost,
                "unfinished": len(left),
                "forgotten": sum(1 for job_id in load.imports if job_id not in records),
                "duplicated": duplicated,
                "failed": dict(
                    collections.Counter(
                        f"{r.kind} {(r.error or {}).get('type', '?')}" for r in records.values() if r.state == FAILED
                    )
                ),
            }
        finally:
            load.stop.set()
            jobs.close()
            load.jobs.close()
            scheduler.kill()
            scheduler.wait(10)
            for process in processes:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = run(args.failovers, args.workers)

    def figures(values: list[float]) -> str:
        shown = ", ".join(f"{value:.2f}" for value in values)
        return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}; {shown})"

    print(f"failovers: {args.failovers}, Sentinel down-after-milliseconds 1000, workers {args.workers} x 4 threads")
    print(f"kill -> Sentinels name the new master: {figures(result['promotion'])}")
    print(f"kill -> first job completed on the new master: {figures(result['first_completion'])}")
    print(f"jobs enqueued: {result['imports']} imports, {result['exports']} exports")
    print(
        f"lost messages found by reconciliation: {result['found_lost']} ({result['failed_lost']} failed, the rest "
        f"re-enqueued); jobs unfinished at the end: {result['unfinished']}; records Redis forgot whole: "
        f"{result['forgotten']}; jobs that ended failed, by kind and error: {result['failed'] or 'none'}"
    )
    print(f"duplicated effects: {result['duplicated']}")
    return 0 if result["duplicated"] == 0 and result["unfinished"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
