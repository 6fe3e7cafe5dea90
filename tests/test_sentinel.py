"""Redis Sentinel failover under load, with real processes only: a master, a replica and
three Sentinels (``tests/sentinels.py``), real workers and a real scheduler given the
Sentinel URL, a host enqueueing imports and exports; the master is SIGKILLed mid-workload,
again and again (the old master comes back as a replica of the new one).

What must hold once the load stops and reconciliation has run: every job ended (none
stuck queued, running or retrying), every succeeded import has its one artifact (its id is
the job's) and no artifact belongs to no import, the quota figure equals the blobs' bytes
after the reindex, and the scheduler fired after the last failover.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sentinels import Load, SentinelCluster

from conftest import ROOT, wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.jobs.records import FINAL_STATES, SUCCEEDED
from workers.scheduler import FIRED

FAILOVERS = 3
#: Dramatiq restarts a consumer that lost its connection after 3 s; a failover need not wait that long.
QUICK_RECONNECT = {"dramatiq_restart_delay": "300"}


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as deployment:
        yield deployment


@pytest.fixture
def sentinel_settings(settings: Settings, cluster: SentinelCluster) -> Settings:
    return settings.with_changes(
        redis_url=cluster.url,
        sweep_schedule="1",
        reconcile_schedule="2",
        reindex_schedule="3600",
        reconcile_grace_seconds=3.0,
        transfer_time_limit_seconds=30.0,
        maintenance_time_limit_seconds=30.0,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        redis_timeout_seconds=2.0,
    )


def start_scheduler(settings: Settings, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )


def unfinished(jobs: ArtifactJobs) -> list[str]:
    return [f"{r.id} {r.kind} {r.state}" for r in jobs.jobs(limit=100_000) if r.state not in FINAL_STATES]


def test_work_survives_repeated_sentinel_failovers(sentinel_settings, cluster, files, workers, tmp_path):
    settings = sentinel_settings
    workers.start(settings=settings, processes=1, threads=4, extra_env=QUICK_RECONNECT)
    workers.start(settings=settings, processes=1, threads=2, extra_env=QUICK_RECONNECT)
    scheduler = start_scheduler(settings, tmp_path / "scheduler.log")
    jobs = ArtifactJobs(settings=settings)
    try:
        with Load(settings, files) as load:
            wait_until(lambda: len(load.imports) >= 10, timeout=60)
            for _ in range(FAILOVERS):
                time.sleep(1.5)  # the load runs on this master
                old, new, _killed_at = cluster.fail_over()
                before = len(load.imports)
                wait_until(
                    lambda before=before: len(load.imports) > before + 5, timeout=60
                )  # the new master takes work
                cluster.rejoin(old)
            last_failover = time.time()
            time.sleep(1.0)
        # The scheduler reconciles every 2 s: lost messages are re-enqueued or failed.
        wait_until(lambda: not unfinished(jobs), timeout=90, interval=0.5)
        records = {record.id: record for record in jobs.jobs(limit=100_000)}
        imports = {job_id: record for job_id, record in records.items() if record.kind == "import"}

        store = ArtifactStore.from_settings(settings, redis=jobs.client)
        on_disk = {ref.artifact_id for ref in store.list()}
        succeeded = {uuid.UUID(job_id).hex for job_id, record in imports.items() if record.state == SUCCEEDED}
        assert succeeded <= on_disk  # each succeeded import has its artifact (the job's id: one, never two)
        # No artifact of no import; an import Redis forgot whole (record and message written
        # just before a master died) may have run on the old master.
        assert on_disk <= {uuid.UUID(job_id).hex for job_id in imports} | _ids_of(load.imports)
        for job_id, record in imports.items():
            if record.state == SUCCEEDED:
                assert record.result["artifact_id"] == uuid.UUID(job_id).hex

        jobs.reindex().wait(60)
        assert store.index.used_bytes() == store.layout.blob_bytes() == sum(ref.size_bytes for ref in store.list())

        fired = [
            decision
            for decision in _decisions(jobs, "sweep")
            if decision["outcome"] == FIRED and decision["tick"] > last_failover
        ]
        assert fired, "the scheduler fired no sweep after the last failover"
        assert scheduler.poll() is None
    finally:
        jobs.close()
        scheduler.kill()
        scheduler.wait(10)


def _ids_of(job_ids: list[str]) -> set[str]:
    return {uuid.UUID(job_id).hex for job_id in job_ids}


def _decisions(jobs: ArtifactJobs, kind: str) -> list[dict]:
    import json

    key = f"{jobs.settings.namespace}:periodic:{kind}:decisions"
    return [json.loads(item) for item in jobs.client.lrange(key, 0, -1)]
