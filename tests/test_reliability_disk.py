"""Disk full: a small tmpfs as the store root (or export target), filled during transfers.

A full filesystem is a permanent ``StorageFull`` naming the place that is full (a retry
cannot help until someone frees space), nothing partial is left, the store stays
consistent, and imports succeed again once space is freed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from paglets_artifacts import ArtifactJobs, ArtifactRef, ArtifactStore, StorageFull, TransferError

MiB = 1024 * 1024
PAGE = 4096


def _mount_tmpfs(mount_point: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (the test runs as uid {os.geteuid()})")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {mount_point}: {done.stderr.strip() or done.returncode}")


def _unmount(mount_point: Path) -> None:
    for _ in range(50):  # a worker that is still exiting may hold a file open for a moment
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted after the test."""
    mount_point = tmp_path / "small-fs"
    _mount_tmpfs(mount_point, "8m")
    yield mount_point
    _unmount(mount_point)


def _fill(directory: Path) -> list[Path]:
    """Fill the filesystem of ``directory`` with one-page files; return them."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = []
    try:
        while True:
            path = directory / f"page-{len(pages)}"
            pages.append(path)
            path.write_bytes(b"f" * PAGE)
    except OSError as exc:
        assert exc.errno == 28, exc
    return pages


def _assert_store_clean(store: ArtifactStore, ids: set[str]) -> None:
    """Only the artifacts ``ids`` are in the store, each whole; no temporary file is left."""
    assert list(store.tmp_dir.iterdir()) == []
    assert {p.stem for p in store.blobs_dir.iterdir()} == ids
    assert {p.stem for p in store.metadata_dir.iterdir()} == ids
    for artifact_id in ids:
        ref = store.ref(artifact_id)
        with store.open_reader(artifact_id) as reader:
            assert hashlib.sha256(reader.read()).hexdigest() == ref.sha256
    assert store.index.used_bytes() == sum(p.stat().st_size for p in store.blobs_dir.iterdir())


def _store(root: Path) -> ArtifactStore:
    return ArtifactStore(root, host_url="http://127.0.0.1:8470", quota_bytes=None, fsync=True)


def test_an_import_larger_than_the_free_space_fails_with_storage_full_and_leaves_nothing(small_fs):
    store = _store(small_fs / "store")
    kept = store.create_from_stream(io.BytesIO(os.urandom(2 * MiB)), name="kept")
    with pytest.raises(StorageFull) as raised:
        store.create_from_stream(io.BytesIO(os.urandom(12 * MiB)), name="too-big")
    message = str(raised.value)
    assert "no space left" in message.lower() and str(store.root) in message
    assert isinstance(raised.value, TransferError) and raised.value.__cause__.errno == 28
    _assert_store_clean(store, {kept.ref.artifact_id})
    # The space the failed attempt used is back: a later import of what fits succeeds.
    later = store.create_from_stream(io.BytesIO(os.urandom(4 * MiB)), name="later")
    _assert_store_clean(store, {kept.ref.artifact_id, later.ref.artifact_id})


def test_a_full_disk_while_the_metadata_is_written_rolls_the_commit_back(small_fs):
    store = _store(small_fs / "store")
    pages = _fill(small_fs / "filler")
    for page in pages[:2]:  # room for an 8 KiB blob, none for its metadata
        page.unlink(missing_ok=True)
    with pytest.raises(StorageFull):
        store.create_from_stream(io.BytesIO(b"b" * 2 * PAGE), name="blob-fits-metadata-does-not")
    _assert_store_clean(store, set())
    for page in pages[2:10]:
        page.unlink(missing_ok=True)
    ok = store.create_from_stream(io.BytesIO(b"b" * 2 * PAGE), name="after-freeing")
    _assert_store_clean(store, {ok.ref.artifact_id})


def test_a_moved_in_source_is_given_back_whole_when_the_commit_finds_the_disk_full(small_fs):
    store = _store(small_fs / "store")
    source = small_fs / "inbox" / "model.bin"
    source.parent.mkdir()
    data = os.urandom(3 * MiB)
    source.write_bytes(data)
    os.chmod(source, 0o666)  # the store drops the write bits while the inode is a blob...
    os.utime(source, (1_000_000, 1_000_000))
    _fill(small_fs / "filler")  # the link needs no space; the metadata does
    with pytest.raises(StorageFull):
        store.create_from_path(source, delete_source=True)
    assert source.read_bytes() == data  # not lost, not half-moved
    info = source.stat()  # ...and gives the source back its own mode and times
    assert (stat.S_IMODE(info.st_mode), info.st_mtime) == (0o666, 1_000_000)
    _assert_store_clean(store, set())


def test_a_copied_source_is_kept_when_the_store_is_full(small_fs, tmp_path):
    store = _store(small_fs / "store")
    source = tmp_path / "elsewhere.bin"  # another filesystem: the import copies
    source.write_bytes(os.urandom(10 * MiB))
    with pytest.raises(StorageFull):
        store.create_from_path(source, delete_source=True)
    assert source.stat().st_size == 10 * MiB
    _assert_store_clean(store, set())


def test_an_export_to_a_full_filesystem_fails_with_storage_full_and_leaves_the_target_alone(small_fs, tmp_path):
    store = _store(tmp_path / "store")
    ref = store.create_from_stream(io.BytesIO(os.urandom(6 * MiB))).ref
    target_dir = small_fs / "work"
    target_dir.mkdir()
    target = target_dir / "model.bin"
    target.write_bytes(b"previous version")
    (small_fs / "ballast").write_bytes(b"x" * 4 * MiB)
    with pytest.raises(StorageFull) as raised:
        store.export_to_path(ref.artifact_id, target)
    assert str(target_dir) in str(raised.value)
    assert sorted(p.name for p in target_dir.iterdir()) == ["model.bin"]  # no hidden .part left
    assert target.read_bytes() == b"previous version"
    (small_fs / "ballast").unlink()
    store.export_to_path(ref.artifact_id, target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == ref.sha256


def test_an_import_job_on_a_full_store_fails_at_once_and_a_later_one_succeeds(small_fs, settings, files, workers):
    settings = settings.with_changes(store_root=small_fs / "store", quota_bytes=None, fsync=True)
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    try:
        big = files / "big.bin"
        big.write_bytes(os.urandom(12 * MiB))
        job = jobs.import_file(str(big), owner_agent_id="agent-full")
        with pytest.raises(StorageFull) as raised:
            job.wait(60)
        record = job.status()
        assert record.state == "failed" and record.attempts == 1  # permanent: not retried
        assert record.error["type"] == "StorageFull" and "no space left" in record.error["message"].lower()
        assert str(raised.value) == record.error["message"]
        store = ArtifactStore.from_settings(settings)
        _assert_store_clean(store, set())
        assert big.stat().st_size == 12 * MiB

        small = files / "small.bin"
        small.write_bytes(os.urandom(3 * MiB))
        ref = ArtifactRef.from_wire(jobs.import_file(str(small), owner_agent_id="agent-full").wait(60))
        assert ref.artifact_id == uuid.UUID(jobs.jobs(kind="import", state="succeeded")[0].id).hex
        _assert_store_clean(store, {ref.artifact_id})
    finally:
        jobs.close()
        workers.stop_all()  # before the tmpfs is unmounted


def test_an_upload_to_a_full_store_answers_507_and_leaves_nothing(small_fs, settings, jobs):
    import httpx

    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    store = _store(small_fs / "store")
    with (
        ServerThread(create_app(settings, store=store, jobs=jobs)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        answer = client.post("/artifacts", params={"name": "big.bin"}, content=os.urandom(12 * MiB))
        assert answer.status_code == 507, answer.text
        body = answer.json()
        assert body["error_type"] == "TransferError" and body["error_class"] == "StorageFull"
        assert "no space left" in body["error"].lower()
        _assert_store_clean(store, set())
        ok = client.post("/artifacts", params={"name": "small.bin"}, content=os.urandom(MiB))
        assert ok.status_code == 200, ok.text
        _assert_store_clean(store, {ok.json()["artifact"]["artifact_id"]})
