"""Many machines, one store: what the store needs of a shared volume, and what it does
with what such volumes leave behind.

- NFS "silly renames": a file deleted while some process still has it open is renamed
  ``.nfsXXXX`` in its directory until it is closed. Sweeps and reindexing must neither
  count such files nor delete them (the client that holds them removes them).
- ``ESTALE`` (a stale file handle: another machine replaced or removed the file) is a
  transient error: the job is retried, and its next attempt opens the path afresh.
- The store names no absolute path on disk: a machine that mounts the volume elsewhere
  (another ``PAGLETS_ARTIFACTS_STORE_ROOT``) reads the same artifacts.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from conftest import ROOT
from paglets_artifacts import ArtifactStore
from paglets_artifacts.jobs.worker_process import WorkerProcess

SILLY_NAMES = (".nfs000000000123abcd00000001", ".nfs0000000004567ef0000000a2")


def plant_silly_renames(store: ArtifactStore, *, age_seconds: float) -> list[Path]:
    planted = []
    then = time.time() - age_seconds
    for directory in store.layout.directories:
        for name in SILLY_NAMES:
            path = directory / name
            path.write_bytes(b"x" * 4096)
            os.utime(path, (then, then))
            planted.append(path)
    return planted


def test_sweep_and_reindex_ignore_and_keep_nfs_silly_rename_files(settings, jobs, files, workers, redis_client):
    store = ArtifactStore.from_settings(settings, redis=redis_client)
    (files / "kept.bin").write_bytes(b"k" * 1000)
    workers.start()
    ref = jobs.import_file(str(files / "kept.bin")).wait(60)
    planted = plant_silly_renames(store, age_seconds=10 * settings.spool_ttl_seconds)

    swept = jobs.sweep().wait(60)
    jobs.reindex().wait(60)

    assert all(path.exists() and path.stat().st_size == 4096 for path in planted)
    assert (swept["parts_removed"], swept["expired_removed"], swept["orphans_removed"]) == (0, 0, 0)
    assert swept["unreadable_metadata"] == 0
    assert [artifact.artifact_id for artifact in store.list()] == [ref["artifact_id"]]
    assert store.index.used_bytes() == 1000 == store.layout.blob_bytes()


def test_a_stale_file_handle_is_retried_and_the_next_attempt_succeeds(settings, jobs, workers, tmp_path):
    import stale_handle_actor

    command = WorkerProcess(
        settings=settings, processes=1, threads=1, modules=["stale_handle_actor"], pythonpath=[ROOT, ROOT / "tests"]
    )
    with open(tmp_path / "stale-worker.log", "wb") as log:
        workers.processes.append(command.start(stdout=log, cwd=ROOT))
    job = jobs.enqueue(stale_handle_actor.STALE_ONCE)
    assert job.wait(60) == {"attempt": 2}
    assert jobs.job(job.id).status().attempts == 2


def test_a_machine_mounting_the_volume_elsewhere_reads_the_same_artifacts(settings, jobs, files, workers, tmp_path):
    (files / "shared.bin").write_bytes(b"s" * 2048)
    workers.start()
    ref = jobs.import_file(str(files / "shared.bin")).wait(60)
    # The same bytes under another path, as another machine's mount point shows them.
    elsewhere = tmp_path / "mnt" / "artifacts"
    shutil.copytree(settings.store_root, elsewhere)
    other = ArtifactStore(elsewhere, host_url=settings.host_url)
    assert other.ref(ref["artifact_id"]).sha256 == ref["sha256"]
    with other.open_reader(ref["artifact_id"]) as reader:
        assert reader.read() == b"s" * 2048
