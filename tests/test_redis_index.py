"""The Redis index: exact quota arithmetic, answers equal to a full scan, builds from disk
(once, under a lock), rebuilds after a flush, and reconciliation of changes made on disk
behind its back. Every test runs against the session's real Redis."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from paglets_artifacts import ArtifactRef, ArtifactStore, ChecksumMismatch, QuotaExceeded, Settings
from paglets_artifacts.store.artifacts import metadata_json
from paglets_artifacts.store.index import ScanIndex
from paglets_artifacts.store.redis_index import BuildLock, IndexKeys, IndexUnavailable, RedisIndex

HOST = "http://127.0.0.1:8470"


def make_store(root: Path, client: redis.Redis, namespace: str, **options) -> ArtifactStore:
    index_options = {
        name: options.pop(name)
        for name in list(options)
        if name in ("reservation_seconds", "lock_seconds", "build_wait_seconds")
    }
    options.setdefault("fsync", False)
    store = ArtifactStore(root, host_url=HOST, **options)
    store.index = RedisIndex(store.layout, store.layout.read_ref, client, namespace=namespace, **index_options)
    return store


def write_on_disk(
    root: Path, *, size: int, owner: str = "", expires_at: float = 0.0, age: float = 0.0, artifact_id: str | None = None
) -> ArtifactRef:
    """An artifact written the way a paglets host writes one, with no index involved."""
    artifact_id = artifact_id or uuid.uuid4().hex
    data = os.urandom(size)
    for sub in ("blobs", "metadata", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / f"{artifact_id}.bin"
    blob.write_bytes(data)
    ref = ArtifactRef(
        host_url=HOST,
        artifact_id=artifact_id,
        name=f"{artifact_id[:6]}.bin",
        size_bytes=size,
        sha256=hashlib.sha256(data).hexdigest(),
        compression="",
        created_at=time.time(),
        expires_at=expires_at,
        owner_agent_id=owner,
    )
    (root / "metadata" / f"{artifact_id}.json").write_text(metadata_json(ref), encoding="utf-8")
    if age:
        past = time.time() - age
        os.utime(blob, (past, past))
    return ref


def fill(root: Path, count: int, *, now: float) -> list[ArtifactRef]:
    """``count`` artifacts over four owners; every fifth expired, every seventh expiring later."""
    refs = []
    for number in range(count):
        expires = now - 10 if number % 5 == 0 else now + 3600 if number % 7 == 0 else 0.0
        refs.append(write_on_disk(root, size=100 + number, owner=f"owner-{number % 4}", expires_at=expires))
    return refs


def disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in (root / "blobs").glob("*.bin"))


def snapshot(index: RedisIndex, owners: list[str]) -> dict:
    """What the index answers, for comparing two states of it."""
    return {
        "figures": index.figures(),
        "all": index.all_ids(),
        "owners": {owner: index.owner_ids(owner) for owner in owners},
        "expired": sorted(index.expired_ids(time.time() + 7200)),
    }


# ---------------------------------------------------------------------- quota arithmetic


def test_reserve_release_commit_and_remove_keep_used_bytes_exact(tmp_path, redis_client, namespace):
    store = make_store(tmp_path / "store", redis_client, namespace)
    index = store.index
    index.reserve("aa", 100, 1000)
    assert index.used_bytes() == 100
    index.reserve("aa", 150, 1000)  # the same import again (redelivered): replaces its hold
    assert index.used_bytes() == 150
    index.release("aa")
    index.release("aa")
    assert index.used_bytes() == 0
    index.reserve("bb", 300, 1000)
    ref = ArtifactRef(
        host_url=HOST,
        artifact_id="bb",
        name="b",
        size_bytes=300,
        sha256="0" * 64,
        compression="",
        created_at=1.0,
        expires_at=0.0,
        owner_agent_id="o",
    )
    index.add(ref)
    index.add(ref)  # twice: still one artifact
    assert index.figures() == {
        "artifacts": 1,
        "bytes": 300,
        "used_bytes": 300,
        "reservations": 0,
        "reserved_bytes": 0,
        "expiring": 0,
    }
    index.reserve("bb", 300, 300)  # a redelivered import of a committed artifact holds nothing more
    assert index.used_bytes() == 300
    index.removed("bb")
    index.removed("bb")
    assert index.figures()["used_bytes"] == 0
    assert index.owner_ids("o") == []


def test_a_reservation_over_quota_raises_quota_exceeded_and_holds_nothing(tmp_path, redis_client, namespace):
    index = make_store(tmp_path / "store", redis_client, namespace).index
    index.reserve("aa", 600, 1000)
    with pytest.raises(QuotaExceeded, match="1001 bytes would exceed 1000"):
        index.reserve("bb", 401, 1000)
    index.reserve("cc", 400, 1000)  # exactly the quota is allowed
    assert index.figures()["reservations"] == 2
    assert index.used_bytes() == 1000
    index.reserve("dd", 5, None)  # no quota: always granted, still counted
    assert index.used_bytes() == 1005


def test_an_import_over_quota_fails_and_leaves_nothing_behind(tmp_path, redis_client, namespace):
    store = make_store(tmp_path / "store", redis_client, namespace, quota_bytes=1000)
    store.create_from_stream(io.BytesIO(b"a" * 700), size_bytes=700, owner_agent_id="o")
    for size in (400, -1):  # declared size, and a chunked body whose size is known only at the end
        with pytest.raises(QuotaExceeded):
            store.create_from_stream(io.BytesIO(b"b" * 400), size_bytes=size, owner_agent_id="o")
    assert list(store.tmp_dir.iterdir()) == []
    assert len(list(store.blobs_dir.iterdir())) == 1
    assert store.index.figures() == {
        "artifacts": 1,
        "bytes": 700,
        "used_bytes": 700,
        "reservations": 0,
        "reserved_bytes": 0,
        "expiring": 0,
    }


def test_a_failed_import_releases_its_reservation(tmp_path, redis_client, namespace):
    store = make_store(tmp_path / "store", redis_client, namespace, quota_bytes=1000)
    with pytest.raises(ChecksumMismatch):
        store.create_from_stream(io.BytesIO(b"a" * 700), size_bytes=700, expected_sha256="0" * 64)
    assert store.index.figures()["used_bytes"] == 0
    assert store.index.figures()["reservations"] == 0


def test_a_lapsed_reservation_is_dropped_by_reconcile_and_a_live_one_is_kept(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    short = make_store(root, redis_client, namespace, reservation_seconds=0.2).index
    long = make_store(root, redis_client, namespace).index
    short.reserve("aa", 100, 1000)  # its worker was killed and the job never came back
    long.reserve("bb", 50, 1000)  # still running
    time.sleep(0.3)
    report = long.reconcile()
    assert report["lapsed_reservations"] == 1
    assert long.figures()["used_bytes"] == 50
    assert long.figures()["reservations"] == 1


# ---------------------------------------------------------------------- answers equal a full scan


def test_sweep_owner_deletion_and_listing_equal_a_full_scan(tmp_path, redis_client, namespace):
    now = time.time()
    fill(tmp_path / "indexed", 60, now=now)
    shutil.copytree(tmp_path / "indexed", tmp_path / "scanned")
    indexed = make_store(tmp_path / "indexed", redis_client, namespace, quota_bytes=None)
    scanned = ArtifactStore(tmp_path / "scanned", host_url=HOST, quota_bytes=None, fsync=False)
    assert isinstance(scanned.index, ScanIndex) and scanned.index.scans and not indexed.index.scans
    owners = [f"owner-{number}" for number in range(4)] + ["nobody"]

    for owner in owners:
        assert indexed.list(owner_agent_id=owner) == scanned.list(owner_agent_id=owner)
    assert indexed.index.all_ids() == scanned.index.all_ids()
    assert sorted(indexed.index.expired_ids(now)) == sorted(scanned.index.expired_ids(now))
    assert indexed.index.used_bytes() == scanned.index.used_bytes()

    assert indexed.cleanup_temporary(now=now) == scanned.cleanup_temporary(now=now)
    assert indexed.delete_owner("owner-1") == scanned.delete_owner("owner-1")
    for owner in owners:
        assert indexed.list(owner_agent_id=owner) == scanned.list(owner_agent_id=owner)
    assert indexed.list() == scanned.list()
    assert indexed.index.used_bytes() == scanned.index.used_bytes() == disk_bytes(tmp_path / "indexed")
    assert indexed.index.all_ids() == scanned.index.all_ids()


# ---------------------------------------------------------------------- built from disk, once


def test_an_adopted_store_directory_is_indexed_automatically(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    refs = fill(root, 25, now=time.time())
    store = make_store(root, redis_client, namespace)
    assert store.index.used_bytes() == sum(ref.size_bytes for ref in refs) == disk_bytes(root)
    assert store.index.owner_ids("owner-2") == sorted(r.artifact_id for r in refs if r.owner_agent_id == "owner-2")
    built = json.loads(redis_client.get(IndexKeys(namespace).ready))
    assert built["mode"] == "build" and built["added"] == 25


def test_only_one_of_many_clients_builds_a_missing_index(tmp_path, redis_url, namespace, monkeypatch):
    root = tmp_path / "store"
    fill(root, 300, now=time.time())
    builds = []
    scan = RedisIndex._scan

    def counted(self, lock, *, mode):
        builds.append(mode)
        time.sleep(0.2)  # a slow build: the others must wait for it, not start their own
        return scan(self, lock, mode=mode)

    monkeypatch.setattr(RedisIndex, "_scan", counted)
    answers: list[int] = []

    def worker() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            answers.append(make_store(root, client, namespace).index.used_bytes())
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == ["build"]
    assert answers == [disk_bytes(root)] * 6


def test_waiting_too_long_for_another_build_raises_index_unavailable(tmp_path, redis_client, namespace):
    keys = IndexKeys(namespace)
    redis_client.set(keys.build_lock, "a builder that hangs", px=10_000)
    store = make_store(tmp_path / "store", redis_client, namespace, build_wait_seconds=0.3)
    with pytest.raises(IndexUnavailable, match="was not ready within"):
        store.index.used_bytes()
    with pytest.raises(IndexUnavailable, match="held the index lock"):
        store.index.rebuild()
    assert isinstance(IndexUnavailable("x"), redis.TimeoutError)  # transient: jobs retry it


def test_an_index_that_vanishes_while_reserving_raises_index_unavailable(tmp_path, redis_client, namespace):
    index = make_store(tmp_path / "store", redis_client, namespace).index
    index.ensure_built = lambda: None  # flushed again right after each build
    with pytest.raises(IndexUnavailable, match="vanished while reserving"):
        index.reserve("aa", 10, 100)


def test_a_dead_builders_lock_lapses_and_another_process_builds(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    fill(root, 5, now=time.time())
    redis_client.set(IndexKeys(namespace).build_lock, "a builder that was killed", px=300)
    store = make_store(root, redis_client, namespace, build_wait_seconds=10)
    assert store.index.used_bytes() == disk_bytes(root)


def test_a_pass_that_lost_its_lock_does_not_finish(tmp_path, redis_client, namespace):
    lock = BuildLock(redis_client, IndexKeys(namespace).build_lock, seconds=5)
    assert lock.acquire()
    assert not BuildLock(redis_client, lock.key, seconds=5).acquire()
    lock.renew(force=True)
    redis_client.set(lock.key, "someone else")  # ours lapsed and another process took it
    with pytest.raises(IndexUnavailable, match="lost the index build lock"):
        lock.renew(force=True)
    lock.release()
    assert redis_client.get(lock.key) == b"someone else"  # never releases another's lock


# ---------------------------------------------------------------------- rebuild and reconcile


def test_a_flushed_index_is_rebuilt_with_the_same_figures(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    store = make_store(root, redis_client, namespace, quota_bytes=None)
    fill(root, 40, now=time.time())
    store.create_from_stream(io.BytesIO(b"x" * 1234), size_bytes=1234, owner_agent_id="owner-0")
    owners = [f"owner-{number}" for number in range(4)]
    before = snapshot(store.index, owners)
    keys = IndexKeys(namespace)
    for flush_then in ("rebuild", "any query"):
        redis_client.delete(*keys.existing(redis_client))
        assert keys.existing(redis_client) == []
        if flush_then == "rebuild":
            report = store.index.rebuild()
            assert report["artifacts"] == 41 and report["bytes"] == disk_bytes(root)
        assert snapshot(store.index, owners) == before


def test_rebuild_corrects_wrong_entries_and_the_counter(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    refs = fill(root, 10, now=time.time())
    store = make_store(root, redis_client, namespace)
    store.index.used_bytes()
    keys = IndexKeys(namespace)
    victim = refs[3]
    redis_client.hset(keys.sizes, victim.artifact_id, 1)  # an entry and the counter both wrong
    redis_client.incrby(keys.used, 5000)
    report = store.index.rebuild()
    assert report["updated"] == 1
    assert report["counter_drift"] == 5000 + victim.size_bytes - 1
    assert store.index.used_bytes() == disk_bytes(root)


def test_reconcile_picks_up_artifacts_added_and_removed_on_disk(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    store = make_store(root, redis_client, namespace)
    kept = store.create_from_stream(io.BytesIO(b"k" * 10), size_bytes=10, owner_agent_id="host").ref
    gone = store.create_from_stream(
        io.BytesIO(b"g" * 20), size_bytes=20, owner_agent_id="host", expires_at=time.time() + 60
    ).ref
    added = write_on_disk(root, size=30, owner="host", expires_at=time.time() - 1)  # a paglets host's upload
    for path in (root / "metadata" / f"{gone.artifact_id}.json", root / "blobs" / f"{gone.artifact_id}.bin"):
        path.unlink()  # a paglets host deleted it
    assert store.index.owner_ids("host") == sorted([kept.artifact_id, gone.artifact_id])

    report = store.index.reconcile()
    assert (report["mode"], report["added"], report["removed"]) == ("reconcile", 1, 1)
    assert store.index.owner_ids("host") == sorted([kept.artifact_id, added.artifact_id])
    assert store.index.expired_ids(time.time()) == [added.artifact_id]
    assert store.index.used_bytes() == 40 == disk_bytes(root)
    assert store.index.reconcile()["added"] == 0  # nothing changed since


def test_a_store_reconcile_removes_orphans_older_than_the_spool_ttl(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    store = make_store(root, redis_client, namespace, spool_ttl_seconds=60)
    old_orphan = write_on_disk(root, size=11, age=120)
    young_orphan = write_on_disk(root, size=12)  # maybe a paglets host's commit in progress
    blobless = write_on_disk(root, size=13)
    for ref in (old_orphan, young_orphan):
        (root / "metadata" / f"{ref.artifact_id}.json").unlink()
    (root / "blobs" / f"{blobless.artifact_id}.bin").unlink()
    (root / "blobs" / "not-an-id.bin").write_bytes(b"?")  # not ours: never touched

    report = store.reconcile()  # the store's orphan rule, then the index's reconciliation
    assert (report["orphans_removed"], report["orphan_bytes_freed"]) == (2, 11)
    assert sorted(path.name for path in (root / "blobs").iterdir()) == sorted(
        [f"{young_orphan.artifact_id}.bin", "not-an-id.bin"]
    )
    assert list((root / "metadata").iterdir()) == []
    assert store.index.figures()["artifacts"] == 0


def test_the_index_removes_no_file_and_the_store_reindex_removes_the_orphans(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    store = make_store(root, redis_client, namespace, spool_ttl_seconds=60)
    orphan = write_on_disk(root, size=11, age=120)
    blobless = write_on_disk(root, size=13)
    store.layout.metadata(orphan.artifact_id).unlink()
    store.layout.blob(blobless.artifact_id).unlink()
    on_disk = sorted(str(path) for path in root.rglob("*") if path.is_file())

    store.index.ensure_built()  # built at first use
    store.index.rebuild()
    store.index.reconcile()
    sweep = store.cleanup_temporary()  # with the Redis index the sweep leaves orphans to reindex
    assert sweep.orphans_removed == 0
    assert sorted(str(path) for path in root.rglob("*") if path.is_file()) == on_disk

    report = store.reindex()
    assert (report["mode"], report["orphans_removed"], report["orphan_bytes_freed"]) == ("rebuild", 2, 11)
    assert [path for path in root.rglob("*") if path.is_file()] == []


def test_delete_owner_frees_what_a_deletion_killed_half_way_left(tmp_path, redis_client, namespace):
    store = make_store(tmp_path / "store", redis_client, namespace)
    half = store.create_from_stream(io.BytesIO(b"h" * 10), owner_agent_id="o").ref
    whole = store.create_from_stream(io.BytesIO(b"w" * 7), owner_agent_id="o").ref
    store.layout.metadata(half.artifact_id).unlink()  # a removal killed between metadata and blob

    deletion = store.delete_owner("o")
    assert deletion.deleted == [whole]
    assert deletion.bytes_freed == 10 + 7
    assert not store.layout.blob(half.artifact_id).exists()
    assert store.index.owner_ids("o") == [] and store.index.used_bytes() == 0


def test_unreadable_metadata_is_counted_and_not_indexed(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    good = write_on_disk(root, size=10)
    bad = write_on_disk(root, size=20)
    (root / "metadata" / f"{bad.artifact_id}.json").write_text("{not json", encoding="utf-8")
    store = make_store(root, redis_client, namespace)
    report = store.index.rebuild()
    assert (report["unreadable_metadata"], report["unreadable_ids"]) == (1, [bad.artifact_id])
    assert store.index.all_ids() == [good.artifact_id]


def test_a_deletion_during_a_pass_is_never_added_back(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    refs = fill(root, 8, now=time.time())
    store = make_store(root, redis_client, namespace, quota_bytes=None)
    victim = refs[2].artifact_id
    record = store.index._upsert_many

    def delete_then_record(entries, *args):
        if any(entry[0] == victim for entry in entries):
            store.remove(victim)  # deleted after the pass read it from disk, before it is recorded
        return record(entries, *args)

    store.index._upsert_many = delete_then_record
    report = store.index.rebuild()
    assert victim not in store.index.all_ids()
    assert report["artifacts"] == 7
    assert store.index.used_bytes() == disk_bytes(root)


def test_an_artifact_deleted_while_a_pass_reads_it_is_skipped(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    refs = fill(root, 6, now=time.time())
    store = make_store(root, redis_client, namespace)
    victims = {refs[1].artifact_id: "blob", refs[4].artifact_id: "metadata"}
    read = store.index.read_ref  # the reader the index was given

    def read_then_lose(artifact_id: str) -> ArtifactRef:
        if victims.get(artifact_id) == "metadata":
            (root / "metadata" / f"{artifact_id}.json").unlink()  # gone before it is read
        result = read(artifact_id)
        if victims.get(artifact_id) == "blob":
            (root / "blobs" / f"{artifact_id}.bin").unlink()  # gone after its metadata was read
        return result

    store.index.read_ref = read_then_lose
    report = store.index.rebuild()
    assert (report["added"], report["unreadable_metadata"]) == (4, 0)
    assert set(store.index.all_ids()) == {ref.artifact_id for ref in refs} - set(victims)


def test_the_sweep_drops_entries_of_artifacts_deleted_behind_its_back(tmp_path, redis_client, namespace):
    root = tmp_path / "store"
    store = make_store(root, redis_client, namespace)
    ref = store.create_from_stream(io.BytesIO(b"e" * 10), size_bytes=10, expires_at=time.time() - 1).ref
    (root / "metadata" / f"{ref.artifact_id}.json").unlink()  # a paglets host swept it first
    (root / "blobs" / f"{ref.artifact_id}.bin").unlink()
    report = store.cleanup_temporary()
    assert report.expired_removed == 0
    assert store.index.expired_ids(time.time()) == []
    assert store.index.used_bytes() == 0


def test_a_redelivered_import_records_an_artifact_its_first_attempt_committed(tmp_path, redis_client, namespace):
    store = make_store(tmp_path / "store", redis_client, namespace)
    artifact_id = uuid.uuid4().hex
    store.index.reserve(artifact_id, 10, None)  # the first attempt reserved, renamed, then died
    write_on_disk(store.root, size=10, owner="o", artifact_id=artifact_id)

    result = store.create_from_stream(io.BytesIO(b"z" * 10), size_bytes=10, artifact_id=artifact_id)
    assert result.ref.artifact_id == artifact_id
    assert store.index.owner_ids("o") == [artifact_id]
    assert store.index.figures() == {
        "artifacts": 1,
        "bytes": 10,
        "used_bytes": 10,
        "reservations": 0,
        "reserved_bytes": 0,
        "expiring": 0,
    }


def test_from_settings_uses_the_redis_index_only_with_a_client(tmp_path, redis_client, namespace):
    settings = Settings(store_root=tmp_path / "store", namespace=namespace, transfer_time_limit_seconds=100)
    assert isinstance(ArtifactStore.from_settings(settings).index, ScanIndex)
    index = ArtifactStore.from_settings(settings, redis=redis_client).index
    assert isinstance(index, RedisIndex)
    assert index.keys.prefix == f"{namespace}:index:"
    assert index.reservation_ms == 160_000


# ---------------------------------------------------------------------- through the workers


def test_the_reindex_job_rebuilds_a_flushed_index_and_workers_enforce_the_quota(
    settings, files, jobs, workers, redis_client, namespace
):
    settings = settings.with_changes(quota_bytes=3000)
    workers.start(processes=1, threads=2, settings=settings)
    for number in range(2):
        (files / f"f{number}.bin").write_bytes(b"a" * 1000)
    refs = [
        ArtifactRef.from_wire(jobs.import_file(str(files / f"f{n}.bin"), owner_agent_id="w").wait(60)) for n in range(2)
    ]
    keys = IndexKeys(namespace)
    assert int(redis_client.get(keys.used)) == 2000
    (files / "big.bin").write_bytes(b"b" * 1500)
    with pytest.raises(QuotaExceeded):
        jobs.import_file(str(files / "big.bin"), owner_agent_id="w").wait(60)

    redis_client.delete(*keys.existing(redis_client))
    figures = jobs.reindex().wait(60)
    assert (figures["mode"], figures["artifacts"], figures["bytes"]) == ("rebuild", 2, 2000)
    assert sorted(item.decode() for item in redis_client.smembers(keys.owner("w"))) == sorted(
        ref.artifact_id for ref in refs
    )
