"""Concurrency on the same objects: exports, deletions, owner deletions and sweeps racing
on the same artifacts and owners, in threads of one process and in real worker processes.

Whatever the interleaving: an export either delivers the artifact's exact bytes or fails
with a ``TransferError`` (never half-deleted data, never a stray ``OSError``); nothing
crashes; the store and its index end consistent, with no temporary file left anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import age_temporary_files
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings, TransferError
from paglets_artifacts.errors import error_class
from paglets_artifacts.store.index import ScanIndex

ROUNDS = 12
OWNERS = ("alpha", "beta")


def _make_store(settings: Settings, redis_client, index: str) -> ArtifactStore:
    if index == "redis":
        return ArtifactStore.from_settings(settings.with_changes(quota_bytes=None), redis=redis_client)
    store = ArtifactStore.from_settings(settings.with_changes(quota_bytes=None))
    assert isinstance(store.index, ScanIndex)
    return store


def _seed(store: ArtifactStore, rng: random.Random, count: int) -> dict[str, str]:
    """``count`` artifacts of the two owners, some already expired; id -> sha256."""
    shas = {}
    for i in range(count):
        data = rng.randbytes(rng.randint(1, 300_000))
        ref = store.create_from_stream(
            io.BytesIO(data), owner_agent_id=OWNERS[i % 2], expires_at=1.0 if i % 3 == 0 else 0.0
        ).ref
        shas[ref.artifact_id] = hashlib.sha256(data).hexdigest()
    return shas


def _assert_consistent(store: ArtifactStore, *target_dirs: Path) -> None:
    metas = {p.stem for p in store.metadata_dir.glob("*.json")}
    blobs = {p.stem for p in store.blobs_dir.glob("*.bin")}
    assert metas == blobs, f"orphans: blobs {blobs - metas}, metadata {metas - blobs}"
    assert list(store.tmp_dir.iterdir()) == []
    for artifact_id in blobs:
        blob = store.blobs_dir / f"{artifact_id}.bin"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == store.ref(artifact_id).sha256
    assert store.index.used_bytes() == sum(p.stat().st_size for p in store.blobs_dir.glob("*.bin"))
    assert sorted(store.index.all_ids()) == sorted(blobs)
    for directory in target_dirs:
        assert [p.name for p in directory.rglob(".*.part")] == []


@pytest.mark.parametrize("index", ["scan", "redis"])
def test_threads_racing_exports_deletions_owner_deletions_and_sweeps_keep_the_store_consistent(
    index, settings, redis_client, files
):
    store = _make_store(settings, redis_client, index)
    rng = random.Random(index)
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    for round_number in range(ROUNDS):
        shas = _seed(store, rng, 10)
        ids = list(shas)
        exported: list[tuple[str, Path]] = []
        sweeps = []
        out = files / f"round-{round_number}"
        gate = threading.Barrier(8)

        def run(work: Callable[[], None]) -> Callable[[], None]:
            def body() -> None:
                gate.wait()
                try:
                    work()
                except TransferError:
                    pass  # an artifact deleted under our feet is an expected, typed answer
                except BaseException as exc:
                    with lock:
                        unexpected.append(exc)

            return body

        def exporter(seed: int) -> Callable[[], None]:
            def work() -> None:
                local = random.Random(seed)
                for artifact_id in local.sample(ids, len(ids)):
                    target = out / f"{seed}" / f"{artifact_id}.bin"
                    try:
                        store.export_to_path(artifact_id, target)
                    except TransferError:
                        continue
                    with lock:
                        exported.append((artifact_id, target))

            return work

        def deleter() -> None:
            for artifact_id in rng.sample(ids, 4):
                store.delete(artifact_id)

        def owner_deleter() -> None:
            store.delete_owner(OWNERS[round_number % 2])

        def sweeper() -> None:
            sweeps.append(store.cleanup_temporary())

        workers = [exporter(s) for s in range(4)] + [deleter, owner_deleter, sweeper, sweeper]
        threads = [threading.Thread(target=run(work)) for work in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not unexpected, f"round {round_number}: {unexpected!r}"
        for artifact_id, target in exported:
            assert hashlib.sha256(target.read_bytes()).hexdigest() == shas[artifact_id]
        for report in sweeps:
            assert report.unreadable_metadata == 0, report  # a deletion in flight is not corruption
        assert store.list(owner_agent_id=OWNERS[round_number % 2]) == []
        _assert_consistent(store, out)


def test_worker_jobs_racing_on_the_same_artifacts_end_cleanly(settings, redis_client, files, workers):
    store = ArtifactStore.from_settings(settings, redis=redis_client)
    rng = random.Random(7)
    shas = {}
    for i in range(16):
        data = rng.randbytes(rng.randint(1, 2_000_000))
        ref = store.create_from_stream(io.BytesIO(data), owner_agent_id=OWNERS[i % 2]).ref
        shas[ref.artifact_id] = hashlib.sha256(data).hexdigest()
    ids = list(shas)
    jobs = ArtifactJobs(settings=settings)
    handles = []
    exports = {}
    for n in range(48):  # every artifact exported three times: twice to its own target, once moved
        artifact_id = ids[n % len(ids)]
        move = n >= 32
        target = files / ("moved" if move else f"copy-{n % 2}") / f"{artifact_id}.bin"
        handle = jobs.export(artifact_id, str(target), move=move)
        exports[handle.id] = (artifact_id, target)
        handles.append(handle)
        if n % 12 == 5:
            handles.append(jobs.delete_owner(OWNERS[0]))
            handles.append(jobs.sweep(now=time.time() + 10))
    workers.start(processes=2, threads=4)

    for handle in handles:
        try:
            handle.wait(120)
        except TransferError as exc:  # typed: the artifact was deleted or moved first
            assert error_class(type(exc).__name__) is type(exc)
        record = handle.status()
        assert record.state in ("succeeded", "failed")
        if record.state == "failed":
            assert record.error["type"] in ("ArtifactNotFound",), record.error
        elif handle.id in exports:
            artifact_id, target = exports[handle.id]
            # A target may be rewritten by a later export of the same artifact: same bytes.
            assert hashlib.sha256(target.read_bytes()).hexdigest() == shas[artifact_id]
    assert store.list(owner_agent_id=OWNERS[0]) == []  # no artifact of that owner is created meanwhile
    age_temporary_files(store, settings.spool_ttl_seconds + 1)
    jobs.sweep().wait(60)
    _assert_consistent(store, files)
    jobs.close()


@pytest.mark.parametrize("index", ["scan", "redis"])
def test_an_export_that_opened_the_blob_finishes_with_whole_bytes_even_if_the_artifact_is_deleted(
    index, settings, redis_client, files
):
    store = _make_store(settings, redis_client, index)
    data = os.urandom(3 * 1024 * 1024)
    ref = store.create_from_stream(io.BytesIO(data)).ref
    target = files / "exported.bin"
    deleted = threading.Event()

    def progress(done: int, total: int) -> None:
        if not deleted.is_set():  # mid-copy: the blob is open, delete the artifact now
            store.delete(ref.artifact_id)
            deleted.set()

    store.export_to_path(ref.artifact_id, target, progress=progress)
    assert deleted.is_set() and target.read_bytes() == data
    assert store.list() == []
    _assert_consistent(store, files)


# ---------------------------------------------------------------------- the directory/symlink swap

RENAME_EXCHANGE = 2  # renameat2(2): swap the two names atomically
AT_FDCWD = -100


def _exchanger() -> Callable[[Path, Path], None]:
    """``exchange(a, b)``: swap two names atomically, or skip the test where the kernel,
    the C library or the filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        pytest.skip("no renameat2 in this C library")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def exchange(a: Path, b: Path) -> None:
        if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
            errno_ = ctypes.get_errno()
            raise OSError(errno_, os.strerror(errno_), str(a))

    return exchange


def _ended(job, timeout: float):
    """The job's record once it ended (its error, if any, is in the record)."""
    with contextlib.suppress(Exception):
        job.wait(timeout)
    return job.status()


def _tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (no symlink followed): relative name -> SHA-256."""
    found = {}
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(dirpath) / name
            found[str(path.relative_to(directory))] = (
                "symlink" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return found


def test_a_directory_swapped_for_a_symlink_while_jobs_run_lets_no_byte_out_of_the_roots(
    settings, redis_client, files, workers, tmp_path
):
    exchange = _exchanger()
    # Outside the allowed root: what a local user who can write inside it wants to reach.
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = os.urandom(50_000)
    (outside / "source.bin").write_bytes(secret)
    for n in range(20):
        (outside / f"move-{n}.bin").write_bytes(secret)
    before_outside = _tree(outside)
    secret_sha = hashlib.sha256(secret).hexdigest()

    # Inside: files/swap is a directory one moment and a symlink to outside/ the next.
    swap, other = files / "swap", files / "other"
    swap.mkdir()
    inside = os.urandom(40_000)
    (swap / "source.bin").write_bytes(inside)
    for n in range(20):
        (swap / f"move-{n}.bin").write_bytes(inside)
    other.symlink_to(outside, target_is_directory=True)
    try:
        exchange(swap, other)
        exchange(swap, other)
    except OSError as exc:
        pytest.skip(f"this filesystem cannot exchange names: {exc}")

    store = ArtifactStore.from_settings(settings, redis=redis_client)
    exported = os.urandom(64_000)
    ref = store.create_from_stream(io.BytesIO(exported)).ref
    jobs = ArtifactJobs(settings=settings)
    handles = {}
    for n in range(200):
        handles[jobs.export(ref.artifact_id, str(swap / f"out-{n}.bin")).id] = "export"
    for n in range(100):
        move = n < 20
        path = swap / (f"move-{n}.bin" if move else "source.bin")
        handles[jobs.import_file(str(path), owner_agent_id="swapper", delete_source=move).id] = "import"

    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        while not stop.is_set():
            exchange(swap, other)
            flips[0] += 1

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    workers.start(processes=1, threads=4)
    try:
        records = {job_id: _ended(jobs.job(job_id), 180) for job_id in handles}
    finally:
        stop.set()
        flipper.join(10)
    if swap.is_symlink():
        exchange(swap, other)  # leave files/swap the directory

    # Not a byte written outside: no target, no .part, nothing removed or changed there.
    assert _tree(outside) == before_outside
    # Not a byte read from outside: no artifact holds the outside file's bytes.
    shas = {r.sha256 for r in store.list()}
    assert secret_sha not in shas
    outcomes: dict[tuple[str, str], int] = {}
    for job_id, record in records.items():
        kind = handles[job_id]
        assert record.state in ("succeeded", "failed"), record
        if record.state == "failed":
            # Refused, typed, naming the path: never a raw OSError from a path that moved.
            assert record.error["type"] == "PathNotAllowed", record.error
            assert "swap" in record.error["message"], record.error
        else:
            wanted = hashlib.sha256(exported if kind == "export" else inside).hexdigest()
            assert record.result["sha256"] == wanted
        outcomes[kind, record.state] = outcomes.get((kind, record.state), 0) + 1
    # The race was run: both kinds both succeeded and were refused.
    assert all(
        outcomes.get((kind, state), 0) > 0 for kind in ("export", "import") for state in ("succeeded", "failed")
    ), outcomes
    for directory in (swap, other if not other.is_symlink() else swap):
        assert [p.name for p in directory.glob(".*.part")] == []
    print(f"swap race: {flips[0]} exchanges, outcomes {outcomes}")
    jobs.close()
