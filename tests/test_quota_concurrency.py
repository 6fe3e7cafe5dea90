"""The quota under concurrency: importer processes racing a small quota through the
Redis index never push used bytes over it, and a killed importer's reservation neither
counts twice when its import is redelivered nor holds forever when it is not."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import age_temporary_files, wait_until
from paglets_artifacts import ArtifactStore
from paglets_artifacts.store.redis_index import RedisIndex

HOST = "http://127.0.0.1:8470"

# One importer: waits for the start signal, then imports (declared and unknown sizes, some
# with a wrong checksum) and deletes some of its own artifacts, and prints what it kept.
IMPORTER = r"""
import json, os, random, sys, time
import redis
from paglets_artifacts import ArtifactStore, ChecksumMismatch, QuotaExceeded
from paglets_artifacts.store.redis_index import RedisIndex

cfg = json.loads(sys.argv[1])
client = redis.Redis.from_url(cfg["redis_url"])
store = ArtifactStore(cfg["root"], host_url="http://h", quota_bytes=cfg["quota"], fsync=False)
store.index = RedisIndex(store.layout, store.layout.read_ref, client, namespace=cfg["namespace"])
rng = random.Random(cfg["seed"])


class Trickle:
    # A body arriving in 1 KiB pieces: its reservation is held while other processes race.
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, size):
        time.sleep(0.001)
        piece = self.data[self.pos:self.pos + min(size, 1024)]
        self.pos += len(piece)
        return piece


client.rpush(cfg["ready_key"], os.getpid())
client.blpop([cfg["go_key"]], timeout=60)
kept, deleted, rejected, failed = {}, [], 0, 0
for _ in range(cfg["operations"]):
    roll = rng.random()
    if roll < 0.15 and kept:
        victim = rng.choice(sorted(kept))
        store.delete(victim)
        kept.pop(victim)
        deleted.append(victim)
        continue
    size = rng.randint(512, 6000)
    try:
        ref = store.create_from_stream(
            Trickle(os.urandom(size)),
            size_bytes=size if roll < 0.8 else -1,
            owner_agent_id=cfg["owner"],
            expected_sha256="0" * 64 if roll > 0.95 else None,
        ).ref
        kept[ref.artifact_id] = ref.size_bytes
    except QuotaExceeded:
        rejected += 1
    except ChecksumMismatch:
        failed += 1
print(json.dumps({"kept": kept, "deleted": deleted, "rejected": rejected, "failed": failed}))
"""

# An import that reserves, writes its first bytes, and then hangs until it is killed.
HANGING_IMPORT = r"""
import json, sys, time
import redis
from paglets_artifacts import ArtifactStore
from paglets_artifacts.store.redis_index import RedisIndex

cfg = json.loads(sys.argv[1])
client = redis.Redis.from_url(cfg["redis_url"])
store = ArtifactStore(cfg["root"], host_url="http://h", quota_bytes=cfg["quota"], fsync=False)
store.index = RedisIndex(store.layout, store.layout.read_ref, client, namespace=cfg["namespace"],
                         reservation_seconds=cfg["reservation_seconds"])


class Hangs:
    def __init__(self):
        self.sent = False

    def read(self, size):
        if not self.sent:
            self.sent = True
            return b"h" * 1000
        time.sleep(3600)


store.create_from_stream(Hangs(), size_bytes=cfg["size"], artifact_id=cfg["artifact_id"])
"""


def run_python(code: str, config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def blob_sizes(root: Path) -> dict[str, int]:
    return {path.stem: path.stat().st_size for path in (root / "blobs").glob("*.bin")}


def test_eight_importer_processes_never_push_used_bytes_over_the_quota(tmp_path, redis_url, redis_client, namespace):
    root = tmp_path / "store"
    quota = 40_000
    # An existing store directory: the racing processes also race to build its index.
    adopted = ArtifactStore(root, host_url=HOST, quota_bytes=None, fsync=False)
    for _ in range(4):
        adopted.create_from_stream(io.BytesIO(b"p" * 1000), size_bytes=1000, owner_agent_id="before")
    ready_key, go_key = f"{namespace}:test:ready", f"{namespace}:test:go"
    processes = [
        run_python(
            IMPORTER,
            {
                "redis_url": redis_url,
                "namespace": namespace,
                "root": str(root),
                "quota": quota,
                "seed": number,
                "operations": 40,
                "owner": f"importer-{number}",
                "ready_key": ready_key,
                "go_key": go_key,
            },
        )
        for number in range(8)
    ]
    try:
        for _ in processes:
            assert redis_client.blpop([ready_key], timeout=60) is not None
        store = ArtifactStore(root, host_url=HOST, quota_bytes=quota, fsync=False)
        store.index = RedisIndex(store.layout, store.layout.read_ref, redis_client, namespace=namespace)
        used_key = store.index.keys.used
        redis_client.rpush(go_key, *["go"] * len(processes))
        highest = 0
        passes = 0
        while any(process.poll() is None for process in processes):
            highest = max(highest, int(redis_client.get(used_key) or 0))
            if passes < 3:  # reconciliation and rebuild running while imports and deletions race
                store.index.reconcile() if passes % 2 == 0 else store.index.rebuild()
                passes += 1
            time.sleep(0.002)
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    results = [json.loads(out) for out, _ in outputs]

    kept = {"before": 0}
    for result in results:
        kept.update(result["kept"])
    on_disk = blob_sizes(root)
    assert highest <= quota
    assert sum(result["rejected"] for result in results) > 0  # the quota really was contended
    assert set(on_disk) == set(kept) - {"before"} | set(store.index.owner_ids("before"))
    figures = store.index.figures()
    assert figures["used_bytes"] == sum(on_disk.values()) <= quota
    assert (figures["reservations"], figures["reserved_bytes"]) == (0, 0)
    assert figures["artifacts"] == len(on_disk)
    assert list(store.tmp_dir.iterdir()) == []
    for number, result in enumerate(results):
        assert store.index.owner_ids(f"importer-{number}") == sorted(result["kept"])
    report = store.index.rebuild()  # a full scan agrees with what the races left
    assert (report["counter_drift"], report["added"], report["removed"], report["updated"]) == (0, 0, 0, 0)


def test_a_killed_importers_reservation_is_renewed_on_redelivery_and_lapses_otherwise(
    tmp_path, redis_url, redis_client, namespace
):
    root = tmp_path / "store"
    store = ArtifactStore(root, host_url=HOST, quota_bytes=10_000, fsync=False)
    store.index = RedisIndex(store.layout, store.layout.read_ref, redis_client, namespace=namespace)

    def start_and_kill(artifact_id: str, reservation_seconds: float) -> None:
        process = run_python(
            HANGING_IMPORT,
            {
                "redis_url": redis_url,
                "namespace": namespace,
                "root": str(root),
                "quota": 10_000,
                "size": 4000,
                "artifact_id": artifact_id,
                "reservation_seconds": reservation_seconds,
            },
        )
        part = root / "tmp" / f"{artifact_id}.part"
        try:
            wait_until(
                lambda: part.exists() and redis_client.hexists(store.index.keys.reservations, artifact_id), timeout=30
            )
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # mid-import, as a crash would
            process.communicate()

    redelivered = uuid.uuid4().hex
    start_and_kill(redelivered, 3600)
    assert store.index.figures()["used_bytes"] == 4000  # the dead attempt still holds its bytes
    result = store.create_from_stream(io.BytesIO(b"r" * 4000), size_bytes=4000, artifact_id=redelivered)
    assert result.ref.artifact_id == redelivered
    figures = store.index.figures()
    assert (figures["used_bytes"], figures["reservations"]) == (4000, 0)  # counted once, not twice

    abandoned = uuid.uuid4().hex
    start_and_kill(abandoned, 0.5)
    assert store.index.figures()["used_bytes"] == 8000
    time.sleep(0.6)
    report = store.index.reconcile()
    assert report["lapsed_reservations"] == 1
    assert store.index.figures()["used_bytes"] == 4000 == sum(blob_sizes(root).values())
    # The dead attempt's .part is the sweep's to remove once it is stale.
    age_temporary_files(store, store.spool_ttl_seconds + 1)
    sweep = store.cleanup_temporary()
    assert sweep.parts_removed == 1
    assert list(store.tmp_dir.iterdir()) == []
