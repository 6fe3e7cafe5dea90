"""Workers killed with SIGKILL at chosen and at random points of every job kind.

A worker started here imports ``benchmarks.stress``, whose crash point kills the worker's
whole process group just before the N-th file-system step of a job of one kind; a clean
worker then finishes what the broker redelivers. The long version of the random runs is
``benchmarks/stress.py --runs 50``; the fixed points below are the places where a kill
used to lose data or leave remains behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.stress import (  # noqa: E402
    CRASH_KIND_ENV,
    CRASH_STEP_ENV,
    KINDS,
    MODES,
    Plan,
    run_one,
    kill_worker,
    start_worker,
)
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings  # noqa: E402

MiB = 1024 * 1024


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start workers that load the crash point; every one is stopped after the test."""
    started = []

    def start(settings: Settings, *, crash: tuple[str, str] | None = None):
        env = {CRASH_KIND_ENV: crash[0], CRASH_STEP_ENV: str(crash[1])} if crash else None
        process = start_worker(settings, tmp_path / "worker.log", env=env, threads=1 if crash else 2)
        started.append(process)
        return process

    yield start
    for process in started:
        kill_worker(process)  # every job has ended: a kill is as good as a graceful stop, and faster


def _crash_then_finish(launch, settings: Settings, kind: str, step: str, job) -> object:
    """Run ``job`` on a worker that dies before ``step`` (``"unlink:2"``: the second unlink)
    of a ``kind`` job; finish it on a clean one."""
    doomed = launch(settings, crash=(kind, step))
    assert doomed.wait(timeout=60) == -signal.SIGKILL, "the crash point was not reached"
    assert job.status().state == "running"  # the dead worker held it
    launch(settings)
    return job.wait(60)


def _store(settings: Settings, jobs: ArtifactJobs) -> ArtifactStore:
    return ArtifactStore.from_settings(settings, redis=jobs.client)


def _assert_consistent(store: ArtifactStore) -> None:
    """No temporary file, no orphan, every blob whole, the quota figure equal to the blobs."""
    assert list(store.tmp_dir.iterdir()) == []
    metas = {p.stem for p in store.metadata_dir.iterdir()}
    blobs = {p.stem for p in store.blobs_dir.iterdir()}
    assert metas == blobs
    for artifact_id in blobs:
        data = (store.blobs_dir / f"{artifact_id}.bin").read_bytes()
        assert hashlib.sha256(data).hexdigest() == store.ref(artifact_id).sha256
    assert store.index.used_bytes() == sum(p.stat().st_size for p in store.blobs_dir.iterdir())
    assert sorted(store.index.all_ids()) == sorted(blobs)


# A move-in import: unlink (a stale .part), link, unlink (stale staged metadata), replace
# (the blob), replace (the metadata), unlink (the source).
@pytest.mark.parametrize("step", ["replace:1", "unlink:3"], ids=["before-the-blob-rename", "before-the-source-removal"])
def test_a_move_in_import_killed_mid_commit_loses_nothing(step, settings, files, jobs, launch):
    source = files / "model.bin"
    data = os.urandom(3 * MiB)
    source.write_bytes(data)
    job = jobs.import_file(str(source), owner_agent_id="agent", delete_source=True)
    result = _crash_then_finish(launch, settings, "import", step, job)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert job.status().attempts == 2
    store = _store(settings, jobs)
    assert [ref.artifact_id for ref in store.list()] == [uuid.UUID(job.id).hex]
    assert not source.exists()  # removed, but only once the artifact was committed
    _assert_consistent(store)


def test_an_owner_deletion_killed_between_metadata_and_blob_leaves_no_orphan(settings, files, jobs, launch):
    store = _store(settings, jobs)
    doomed = store.create_from_stream(io.BytesIO(os.urandom(5000)), owner_agent_id="doomed").ref
    kept = store.create_from_stream(io.BytesIO(os.urandom(7000)), owner_agent_id="kept").ref
    job = jobs.delete_owner("doomed")
    result = _crash_then_finish(launch, settings, "delete_owner", "unlink:2", job)  # before the blob's unlink
    assert result["bytes_freed"] == 5000  # the retry removed what the first attempt left
    assert [ref.artifact_id for ref in store.list()] == [kept.artifact_id]
    assert doomed.artifact_id not in store.index.owner_ids("doomed")
    _assert_consistent(store)


def test_a_sweep_killed_between_metadata_and_blob_leaves_no_orphan(settings, files, jobs, launch):
    store = _store(settings, jobs)
    expired = store.create_from_stream(io.BytesIO(os.urandom(4000)), expires_at=1.0).ref
    kept = store.create_from_stream(io.BytesIO(os.urandom(3000))).ref
    job = jobs.sweep()
    result = _crash_then_finish(launch, settings, "sweep", "unlink:2", job)  # before the blob's unlink
    assert result["orphans_removed"] == 1 and result["bytes_freed"] == 4000
    assert [ref.artifact_id for ref in store.list()] == [kept.artifact_id]
    assert expired.artifact_id not in store.index.expired_ids(2.0)
    _assert_consistent(store)


def test_a_move_export_killed_between_metadata_and_blob_leaves_no_orphan(settings, files, jobs, launch):
    store = _store(settings, jobs)
    data = os.urandom(2 * MiB)
    ref = store.create_from_stream(io.BytesIO(data)).ref
    target = files / "out" / "moved.bin"
    # unlink (a stale .part), the copy, replace (into place), unlink (metadata), unlink (blob)
    job = jobs.export(ref.artifact_id, str(target), move=True)
    result = _crash_then_finish(launch, settings, "export", "unlink:3", job)
    assert result["moved"] is True and target.read_bytes() == data
    assert store.list() == []
    _assert_consistent(store)


def test_an_export_killed_mid_copy_leaves_no_part_beside_the_target(settings, files, jobs, launch):
    store = _store(settings, jobs)
    data = os.urandom(2 * MiB)
    ref = store.create_from_stream(io.BytesIO(data)).ref
    target = files / "work" / "copy.bin"
    job = jobs.export(ref.artifact_id, str(target))
    _crash_then_finish(launch, settings, "export", "replace:1", job)  # the copy written, not yet renamed
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]  # the retry replaced the .part
    _assert_consistent(store)


def _seed() -> int:
    return int(os.environ.get("PAGLETS_STRESS_SEED") or random.randrange(1 << 30))


SEED = _seed()
_RNG = random.Random(SEED)
#: One random run per job kind, each crashed by a random way at a random point.
RANDOM_PLANS = [Plan(i + 1, _RNG.randrange(1 << 30), kind, _RNG.choice(MODES)) for i, kind in enumerate(KINDS)]


@pytest.mark.parametrize("plan", RANDOM_PLANS, ids=lambda plan: plan.kind)
def test_random_crash_run_loses_nothing(plan, redis_url, tmp_path):
    outcome = run_one(plan, redis_url=redis_url, base=tmp_path, timeout=90)
    detail = "\n".join(outcome.failed + outcome.lost + outcome.problems + outcome.target_litter)
    reproduce = f"PAGLETS_STRESS_SEED={SEED} (run {plan.run}, injected: {outcome.injected})"
    assert outcome.clean, f"{reproduce}\n{detail}"
    assert outcome.failed == [] and outcome.target_litter == [], f"{reproduce}\n{detail}"
    assert outcome.succeeded == outcome.jobs
