"""The Redis index: quota usage, reservations, expiry order and owner sets in Redis.

Every process and machine that shares the store directory and the Redis shares this
index, so the quota holds across all of them and a sweep, an owner deletion or an
owner listing costs time proportional to its answer instead of the store's size.

Keys, all under ``<namespace>:index:``:

=========================  =====  ===========================================================
``ready``                  str    present once the index was built from disk (its figures)
``used``                   int    bytes of committed artifacts plus live reservations
``sizes``                  hash   artifact id -> blob size, one field per committed artifact
``owners``                 hash   artifact id -> ``owner_agent_id``
``owner:<owner_agent_id>`` set    ids of that owner's artifacts
``expiry``                 zset   ids of artifacts that expire, scored by ``expires_at``
``reservations``           hash   artifact id -> bytes held for an import in flight
``reservation-deadlines``  zset   the same ids, scored by the Redis-clock millisecond their hold lapses
``build-lock``             str    token of the one process building or reconciling (TTL, renewed)
``removed``                zset   ids removed while the lock is held, so that scan never re-adds them
=========================  =====  ===========================================================

Every change is one Lua script, so a quota check and the reservation it grants are a
single atomic step: however many processes import at once, ``used`` never exceeds the
quota. The files stay the truth; :meth:`RedisIndex.rebuild` and :meth:`RedisIndex.reconcile`
bring the index back in line with them (see the README, "Index, quota and scale").
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from ..errors import ArtifactNotFound, QuotaExceeded, TransferError
from ..refs import ArtifactRef
from .index import IndexUnavailable, RefReader
from .layout import StoreLayout

__all__ = ["IndexUnavailable", "IndexKeys", "RedisIndex", "ReconcileReport"]

#: How long a reservation holds unless committed, released or renewed (an import attempt
#: that runs longer is killed by its time limit first; ``from_settings`` derives it from that).
DEFAULT_RESERVATION_SECONDS = 3660.0
#: Time-to-live of the build lock; renewed while a build runs, so a builder that dies
#: blocks the others for at most this long.
DEFAULT_LOCK_SECONDS = 30.0
#: How long an operation waits for another process to finish building a missing index.
DEFAULT_BUILD_WAIT_SECONDS = 900.0
#: Artifacts read from disk, and scripts sent to Redis, per round trip of a build.
BATCH_SIZE = 1000

# Redis' clock, in milliseconds: every deadline is on the same clock, whatever the machine.
_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: ready used sizes reservations deadlines | ARGV: id size quota(-1: none) lease_ms must_fit
# Holds ``size``, but refuses unless ``must_fit`` (>= size) would fit: an upload that holds
# only a step ahead of its bytes is still refused at once when its declared size cannot fit.
_RESERVE = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '0'} end
local id = ARGV[1]
local size = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local need = math.max(size, tonumber(ARGV[5]))
if redis.call('HEXISTS', KEYS[3], id) == 1 then return {1, '0'} end
local old = tonumber(redis.call('HGET', KEYS[4], id) or '0')
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local projected = used - old + need
if quota >= 0 and need > old and projected > quota then
  return {0, string.format('%d', projected)}
end"""
    + _NOW_MS
    + """
redis.call('HSET', KEYS[4], id, ARGV[2])
redis.call('ZADD', KEYS[5], string.format('%d', now_ms + tonumber(ARGV[4])), id)
if size ~= old then redis.call('INCRBY', KEYS[2], string.format('%d', size - old)) end
return {1, string.format('%d', projected)}
"""
)

# KEYS: used reservations deadlines | ARGV: id
_RELEASE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DECRBY', KEYS[1], held)
return 1
"""

# KEYS: used sizes owners expiry reservations deadlines removed
# ARGV: mode(commit|adopt|sync) scan_start_ms owner_key_prefix, then per artifact: id size owner expires_at
# One call records a whole batch (a build sends 1000 artifacts per call). Returns {added, changed}.
_UPSERT = """
local mode, scan_start, owner_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local added, changed = 0, 0
for i = 4, #ARGV, 4 do
  local id, size, owner, expires = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local skip = false
  if mode == 'commit' then
    redis.call('ZREM', KEYS[7], id)
  else
    local gone = redis.call('ZSCORE', KEYS[7], id)
    skip = gone ~= false and tonumber(gone) >= scan_start
  end
  local old = redis.call('HGET', KEYS[2], id)
  if old and mode == 'adopt' then skip = true end
  if not skip then
    local delta = size
    if old then
      delta = size - tonumber(old)
      local old_owner = redis.call('HGET', KEYS[3], id)
      local old_expiry = tonumber(redis.call('ZSCORE', KEYS[4], id) or '0')
      if old_owner and old_owner ~= owner then redis.call('SREM', owner_prefix .. old_owner, id) end
      if delta ~= 0 or old_owner ~= owner or old_expiry ~= expires then changed = changed + 1 end
    else
      added = added + 1
    end
    local held = redis.call('HGET', KEYS[5], id)
    if held then
      delta = delta - tonumber(held)
      redis.call('HDEL', KEYS[5], id)
      redis.call('ZREM', KEYS[6], id)
    end
    redis.call('HSET', KEYS[2], id, ARGV[i + 1])
    redis.call('HSET', KEYS[3], id, owner)
    redis.call('SADD', owner_prefix .. owner, id)
    if expires > 0 then redis.call('ZADD', KEYS[4], ARGV[i + 3], id) else redis.call('ZREM', KEYS[4], id) end
    if delta ~= 0 then redis.call('INCRBY', KEYS[1], string.format('%d', delta)) end
  end
end
return {added, changed}
"""

# KEYS: used sizes owners expiry reservations deadlines removed lock | ARGV: owner_key_prefix id...
# Forgets artifacts (and any hold of theirs); returns how many were indexed. While a pass holds
# the lock, each id is marked removed so that pass never adds it back.
_REMOVE = (
    _NOW_MS
    + """
local marking = redis.call('EXISTS', KEYS[8]) == 1
local found = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local size = redis.call('HGET', KEYS[2], id)
  if size then
    found = found + 1
    redis.call('HDEL', KEYS[2], id)
    redis.call('DECRBY', KEYS[1], size)
    local owner = redis.call('HGET', KEYS[3], id)
    if owner then
      redis.call('SREM', ARGV[1] .. owner, id)
      redis.call('HDEL', KEYS[3], id)
    end
    redis.call('ZREM', KEYS[4], id)
  end
  local held = redis.call('HGET', KEYS[5], id)
  if held then
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    redis.call('DECRBY', KEYS[1], held)
  end
  if marking then redis.call('ZADD', KEYS[7], string.format('%d', now_ms), id) end
end
return found
"""
)

# KEYS: used reservations deadlines | returns the number of lapsed reservations dropped
_DROP_LAPSED = (
    _NOW_MS
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now_ms))
for _, id in ipairs(ids) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DECRBY', KEYS[1], held)
  end
  redis.call('ZREM', KEYS[3], id)
end
return #ids
"""
)

# KEYS: used sizes reservations | returns {used before, committed bytes, reserved bytes}
_RECOUNT = """
local committed = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do committed = committed + tonumber(v) end
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(v) end
local before = redis.call('GET', KEYS[1]) or '0'
redis.call('SET', KEYS[1], string.format('%d', committed + reserved))
return {before, string.format('%d', committed), string.format('%d', reserved)}
"""

# KEYS: lock | ARGV: token ttl_ms
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock | ARGV: token
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class IndexKeys:
    """The Redis keys of one namespace's index (the table in this module's docstring).

    Parameters:
      namespace(str): the settings' namespace.
    """

    def __init__(self, namespace: str):
        self.prefix = f"{namespace}:index:"
        self.ready = self.prefix + "ready"
        self.used = self.prefix + "used"
        self.sizes = self.prefix + "sizes"
        self.owners = self.prefix + "owners"
        self.owner_prefix = self.prefix + "owner:"
        self.expiry = self.prefix + "expiry"
        self.reservations = self.prefix + "reservations"
        self.reservation_deadlines = self.prefix + "reservation-deadlines"
        self.build_lock = self.prefix + "build-lock"
        self.removed = self.prefix + "removed"

    def owner(self, owner_agent_id: str) -> str:
        return self.owner_prefix + owner_agent_id

    def existing(self, client: redis.Redis) -> list[bytes]:
        """Every existing key of this index (a SCAN: for tests and tools, never a hot path)."""
        return list(client.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000))


@dataclass
class ReconcileReport:
    """What a build, rebuild or reconciliation changed, and the index's figures after it."""

    mode: str
    artifacts: int = 0
    bytes: int = 0
    used_bytes: int = 0
    reservations: int = 0
    reserved_bytes: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    lapsed_reservations: int = 0
    unreadable_metadata: int = 0
    unreadable_ids: list[str] = field(default_factory=list)
    counter_drift: int = 0
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class BuildLock:
    """The one-builder lock: a token in Redis with a TTL, renewed while its holder works.

    Parameters:
      client(redis.Redis): the shared Redis.
      key(str): the lock key.
      seconds(float): its time-to-live; a holder that dies frees it after this long.
    """

    def __init__(self, client: redis.Redis, key: str, seconds: float):
        self.client = client
        self.key = key
        self.ttl_ms = max(100, int(seconds * 1000))
        self.token = uuid.uuid4().hex
        self._renewed = 0.0
        self._renew = client.register_script(_RENEW_LOCK)
        self._release = client.register_script(_RELEASE_LOCK)

    def acquire(self) -> bool:
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self._renewed = time.monotonic()
            return True
        return False

    def renew(self, *, force: bool = False) -> None:
        """Extend the lock (at most every third of its TTL unless ``force``); raise
        ``IndexUnavailable`` when it lapsed (deletions were not marked meanwhile, so the
        pass must not finish) or another process holds it now."""
        if not force and time.monotonic() - self._renewed < self.ttl_ms / 3000:
            return
        if not self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            raise IndexUnavailable(f"lost the index build lock {self.key} to another process")
        self._renewed = time.monotonic()

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])


class RedisIndex:
    """Quota, expiry and owner questions answered from Redis in time proportional to the answer.

    Built from disk automatically the first time it is needed (a fresh or flushed Redis, or
    an existing store directory adopted), by exactly one process at a time.

    Parameters:
      layout(StoreLayout): the store directory this index describes (its listings).
      read_ref(RefReader): reads one artifact's ref from its metadata file.
      client(redis.Redis): a client of the Redis every process shares.
      namespace(str): key prefix (the settings' namespace); one namespace describes one store.
      reservation_seconds(float): how long a reservation holds unless it is committed,
        released or renewed by a redelivered import; a reconciliation drops lapsed ones.
      lock_seconds(float): time-to-live of the build lock (renewed while a build runs).
      build_wait_seconds(float): how long an operation waits for another process's build
        of a missing index before raising :class:`IndexUnavailable`.
    """

    def __init__(
        self,
        layout: StoreLayout,
        read_ref: RefReader,
        client: redis.Redis,
        *,
        namespace: str,
        reservation_seconds: float = DEFAULT_RESERVATION_SECONDS,
        lock_seconds: float = DEFAULT_LOCK_SECONDS,
        build_wait_seconds: float = DEFAULT_BUILD_WAIT_SECONDS,
    ):
        self.layout = layout
        self.read_ref = read_ref
        self.client = client
        self.keys = IndexKeys(namespace)
        self.reservation_ms = max(1, int(reservation_seconds * 1000))
        self.lock_seconds = lock_seconds
        self.build_wait_seconds = build_wait_seconds
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._upsert = client.register_script(_UPSERT)
        self._remove = client.register_script(_REMOVE)
        self._drop_lapsed = client.register_script(_DROP_LAPSED)
        self._recount = client.register_script(_RECOUNT)

    # ------------------------------------------------------------------ the StoreIndex protocol

    def reserve(
        self, artifact_id: str, size_bytes: int, quota_bytes: int | None, *, must_fit_bytes: int | None = None
    ) -> None:
        """Hold ``size_bytes`` for ``artifact_id`` or raise ``QuotaExceeded``. Reserving an id
        again (a redelivered import, an upload whose hold grows) replaces its hold instead of
        adding a second one. With ``must_fit_bytes``, refuse unless that many would fit."""
        k = self.keys
        need = int(size_bytes) if must_fit_bytes is None else int(must_fit_bytes)
        args: list[Any] = [
            artifact_id,
            int(size_bytes),
            -1 if quota_bytes is None else int(quota_bytes),
            self.reservation_ms,
            need,
        ]
        for _ in range(2):
            granted, projected = self._reserve(
                keys=[k.ready, k.used, k.sizes, k.reservations, k.reservation_deadlines], args=args
            )
            if granted == 1:
                return
            if granted == 0:
                raise QuotaExceeded(
                    f"artifact storage quota exceeded: {int(projected)} bytes would exceed {quota_bytes}"
                )
            self.ensure_built()
        raise IndexUnavailable(f"the index {k.prefix}* vanished while reserving {artifact_id}")

    def release(self, artifact_id: str) -> None:
        k = self.keys
        self._release(keys=[k.used, k.reservations, k.reservation_deadlines], args=[artifact_id])

    scans = False

    def add(self, ref: ArtifactRef) -> None:
        self._upsert_many([(ref.artifact_id, ref.size_bytes, ref.owner_agent_id, ref.expires_at)], "commit", 0)

    def removed(self, artifact_id: str) -> None:
        self._remove_many([artifact_id])

    def used_bytes(self) -> int:
        self.ensure_built()
        return int(self.client.get(self.keys.used) or 0)

    def owner_ids(self, owner_agent_id: str) -> list[str]:
        """The owner's artifact ids; ``IndexUnavailable`` when Redis cannot be reached (a
        caller that only reads can scan the directory instead)."""
        try:
            self.ensure_built()
            return sorted(_decoded(item) for item in self.client.smembers(self.keys.owner(owner_agent_id)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if isinstance(exc, IndexUnavailable):
                raise
            raise IndexUnavailable(f"the index in Redis cannot be reached: {exc}") from exc

    def expired_ids(self, now: float) -> list[str]:
        self.ensure_built()
        found = cast("list[bytes]", self.client.zrangebyscore(self.keys.expiry, "(0", repr(float(now))))
        return [_decoded(item) for item in found]

    def all_ids(self) -> list[str]:
        self.ensure_built()
        return sorted(_decoded(item) for item in self.client.hkeys(self.keys.sizes))

    # ------------------------------------------------------------------ figures

    def figures(self) -> dict[str, int]:
        """Artifacts and bytes the index holds (building it first if it is missing)."""
        self.ensure_built()
        return self._figures()

    def _figures(self) -> dict[str, int]:
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.hlen(k.sizes)
        pipe.get(k.used)
        pipe.hvals(k.reservations)
        pipe.zcard(k.expiry)
        artifacts, used, held, expiring = cast("list[Any]", pipe.execute())
        reserved = sum(int(value) for value in held)
        used = int(used or 0)
        return {
            "artifacts": int(artifacts),
            "bytes": used - reserved,
            "used_bytes": used,
            "reservations": len(held),
            "reserved_bytes": reserved,
            "expiring": int(expiring),
        }

    def is_built(self) -> bool:
        """Whether the index was built from disk (``<ns>:index:ready`` exists)."""
        return bool(self.client.exists(self.keys.ready))

    # ------------------------------------------------------------------ building and reconciling

    def ensure_built(self) -> None:
        """Build the index from disk if it is missing; when another process is already
        building it, wait for that build instead of starting a second one."""
        if self.client.exists(self.keys.ready):
            return
        deadline = time.monotonic() + self.build_wait_seconds
        while True:
            lock = BuildLock(self.client, self.keys.build_lock, self.lock_seconds)
            if lock.acquire():
                try:
                    if not self.client.exists(self.keys.ready):
                        self._scan(lock, mode="build")
                finally:
                    lock.release()
                return
            if self.client.exists(self.keys.ready):
                return
            if time.monotonic() >= deadline:
                raise IndexUnavailable(
                    f"the index {self.keys.prefix}* is being built by another process and was not "
                    f"ready within {self.build_wait_seconds:g} s"
                )
            time.sleep(0.05)

    def rebuild(self) -> dict[str, Any]:
        """Bring every entry in line with the files: read every metadata file, add, correct
        and drop entries, drop lapsed reservations, recount the quota counter. Returns the
        figures (a :class:`ReconcileReport` wire form). Files are never touched: orphans are
        the store's sweep's (``ArtifactStore.reindex`` removes them, then calls this)."""
        return self._locked("rebuild")

    def reconcile(self) -> dict[str, Any]:
        """Pick up what changed on disk behind the index's back: artifacts added (their
        metadata is read) or removed (ids compared, nothing read), lapsed reservations.
        Cheaper than :meth:`rebuild`: known artifacts are not re-read. Builds the
        index when it is missing. Returns the figures."""
        return self._locked("reconcile")

    def _locked(self, mode: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.build_wait_seconds
        lock = BuildLock(self.client, self.keys.build_lock, self.lock_seconds)
        while not lock.acquire():
            if time.monotonic() >= deadline:
                raise IndexUnavailable(
                    f"another process held the index lock {self.keys.build_lock} for {self.build_wait_seconds:g} s"
                )
            time.sleep(0.05)
        try:
            if mode == "reconcile" and not self.client.exists(self.keys.ready):
                mode = "build"
            return self._scan(lock, mode=mode).to_wire()
        finally:
            lock.release()

    def _scan(self, lock: BuildLock, *, mode: str) -> ReconcileReport:
        """One pass over the store directory, run while holding ``lock``.

        ``build`` and ``rebuild`` read every metadata file; ``reconcile`` reads only those of
        artifacts the index does not know. Concurrent imports and deletions keep running:
        commits are idempotent with what this pass adds, and a deletion that happens after
        ``scan_start`` is marked in ``removed`` so this pass never adds its id back.
        """
        started = time.monotonic()
        k = self.keys
        report = ReconcileReport(mode=mode)
        self.client.delete(k.removed)  # markers of an earlier pass; this pass starts later
        seconds, micros = self.client.time()
        scan_start_ms = int(seconds) * 1000 + int(micros) // 1000
        current = time.time()
        # Blobs first, metadata second: our commits rename the blob before the metadata, so
        # an artifact committed between the two listings shows up as metadata without blob
        # and is re-checked below instead of being taken for gone.
        blobs = self.layout.blobs()
        metas = self.layout.metadata_files()
        indexed = {_decoded(key): int(value) for key, value in self.client.hscan_iter(k.sizes, count=BATCH_SIZE)}
        on_disk = [artifact_id for artifact_id in metas if artifact_id in blobs]
        to_read = on_disk if mode in ("build", "rebuild") else [i for i in on_disk if i not in indexed]
        upsert_mode = "sync" if mode == "rebuild" else "adopt"

        for batch in _batches(to_read, BATCH_SIZE):
            lock.renew()
            entries = []
            for artifact_id in batch:
                try:
                    ref = self.read_ref(artifact_id)
                    size = blobs[artifact_id].stat(follow_symlinks=False).st_size
                except (ArtifactNotFound, FileNotFoundError):
                    continue  # deleted since the listing
                except (TransferError, ValueError, TypeError, KeyError):
                    report.unreadable_metadata += 1
                    if len(report.unreadable_ids) < 100:
                        report.unreadable_ids.append(artifact_id)
                    continue
                entries.append((artifact_id, size, ref.owner_agent_id, ref.expires_at))
            if entries:
                added, changed = self._upsert_many(entries, upsert_mode, scan_start_ms)
                report.added += int(added)
                report.updated += int(changed)

        on_disk_set = set(on_disk)
        vanished = [artifact_id for artifact_id in indexed if artifact_id not in on_disk_set]
        for batch in _batches(vanished, BATCH_SIZE):
            lock.renew()
            gone = [artifact_id for artifact_id in batch if not self._present(artifact_id)]  # else committed since
            if gone:
                report.removed += int(self._remove_many(gone))

        report.lapsed_reservations = int(self._drop_lapsed(keys=[k.used, k.reservations, k.reservation_deadlines]))
        if mode in ("build", "rebuild"):
            before, committed, reserved = self._recount(keys=[k.used, k.sizes, k.reservations])
            report.counter_drift = int(before) - int(committed) - int(reserved) if mode == "rebuild" else 0
        report.seconds = round(time.monotonic() - started, 3)
        figures = self._figures()
        report.artifacts = figures["artifacts"]
        report.bytes = figures["bytes"]
        report.used_bytes = figures["used_bytes"]
        report.reservations = figures["reservations"]
        report.reserved_bytes = figures["reserved_bytes"]
        lock.renew(force=True)  # still ours: the markers guarded the whole pass
        pipe = self.client.pipeline(transaction=True)
        pipe.set(k.ready, json.dumps({"built_at": current, **report.to_wire()}))
        pipe.delete(k.removed)
        pipe.execute()
        return report

    # ------------------------------------------------------------------ internals

    def _present(self, artifact_id: str) -> bool:
        return self.layout.present(artifact_id)

    def _upsert_many(
        self, entries: list[tuple[str, int, str, float]], mode: str, scan_start_ms: int
    ) -> tuple[int, int]:
        """Record ``(id, size, owner, expires_at)`` entries; returns (added, changed)."""
        k = self.keys
        args: list[Any] = [mode, scan_start_ms, k.owner_prefix]
        for artifact_id, size, owner, expires_at in entries:
            args += [artifact_id, int(size), owner, repr(float(expires_at))]
        added, changed = self._upsert(
            keys=[k.used, k.sizes, k.owners, k.expiry, k.reservations, k.reservation_deadlines, k.removed], args=args
        )
        return int(added), int(changed)

    def _remove_many(self, artifact_ids: list[str]) -> int:
        k = self.keys
        return int(
            self._remove(
                keys=[
                    k.used,
                    k.sizes,
                    k.owners,
                    k.expiry,
                    k.reservations,
                    k.reservation_deadlines,
                    k.removed,
                    k.build_lock,
                ],
                args=[k.owner_prefix, *artifact_ids],
            )
        )


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _decoded(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
