"""Job records in Redis: what a host sees of a job, written by hosts and workers.

One hash per job (``<ns>:job:<id>``), a sorted set of recent jobs by enqueue time
(``<ns>:jobs``), and a pub/sub channel (``<ns>:job-events``) on which every state change
is announced, so a host can wait for a job without polling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from ..errors import InvalidInput

QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
#: Ended by a cancel (``JobRecords.cancel``): a queued job never starts, a running one stops.
CANCELED = "canceled"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELED})

#: A completion callback's states (``callback_state``; empty for a job that names none, or
#: that has not ended): queued to be sent, retrying after a failed attempt, delivered (the
#: receiver answered 2xx), failed (a final answer, or every attempt failed).
CALLBACK_PENDING = "pending"
CALLBACK_RETRYING = "retrying"
CALLBACK_DELIVERED = "delivered"
CALLBACK_FAILED = "failed"
CALLBACK_STATES = (CALLBACK_PENDING, CALLBACK_RETRYING, CALLBACK_DELIVERED, CALLBACK_FAILED)

#: How long a record of a job that never ends (a lost message) is kept at most.
UNFINISHED_RECORD_TTL_SECONDS = 7 * 86400


@dataclass
class JobRecord:
    """The state of one job as a host sees it."""

    id: str
    kind: str
    state: str = QUEUED
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    bytes_done: int = 0
    bytes_total: int = -1
    result: Any = None
    error: dict[str, str] | None = None
    worker: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    #: Who canceled it (``Job.cancel(by=...)``) and when; empty unless it was canceled.
    canceled_by: str = ""
    canceled_at: float | None = None
    #: When the attempt that ran as it was canceled stopped and cleaned up (None if none ran).
    stopped_at: float | None = None
    #: How many times it was retried (``Job.retry``) after it failed or was canceled.
    retries: int = 0
    #: The URL its final record is POSTed to (secrets redacted; empty: no callback), how
    #: that went (one of ``CALLBACK_STATES``), the attempts made and the last failure.
    callback_url: str = ""
    callback_state: str = ""
    callback_attempts: int = 0
    callback_error: str = ""

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "result": self.result,
            "error": self.error,
            "worker": self.worker,
            "arguments": self.arguments,
            "canceled_by": self.canceled_by,
            "canceled_at": self.canceled_at,
            "stopped_at": self.stopped_at,
            "retries": self.retries,
            "callback_url": self.callback_url,
            "callback_state": self.callback_state,
            "callback_attempts": self.callback_attempts,
            "callback_error": self.callback_error,
        }

    @classmethod
    def from_hash(cls, job_id: str, data: Mapping[bytes | str, bytes | str]) -> JobRecord:
        """Parse a record's Redis hash; a field that does not parse is ``InvalidInput``."""
        try:
            return cls._from_hash(job_id, data)
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # JSON, numbers, UTF-8
            raise InvalidInput(f"job record {job_id!r} is unreadable: {exc}") from None

    @classmethod
    def _from_hash(cls, job_id: str, data: Mapping[bytes | str, bytes | str]) -> JobRecord:
        values = {_s(key): _s(value) for key, value in data.items()}

        def number(key: str, kind: type, default: Any) -> Any:
            text = values.get(key)
            return default if text in (None, "") else kind(float(text)) if kind is int else kind(text)

        return cls(
            id=job_id,
            kind=values.get("kind", ""),
            state=values.get("state", QUEUED),
            enqueued_at=number("enqueued_at", float, 0.0),
            started_at=number("started_at", float, None),
            finished_at=number("finished_at", float, None),
            attempts=number("attempts", int, 0),
            bytes_done=number("bytes_done", int, 0),
            bytes_total=number("bytes_total", int, -1),
            result=json.loads(values["result"]) if values.get("result") else None,
            error=_mapping_or_none(json.loads(values["error"]) if values.get("error") else None, "error"),
            worker=values.get("worker", ""),
            arguments=_mapping_or_none(
                json.loads(values["arguments"]) if values.get("arguments") else None, "arguments"
            )
            or {},
            canceled_by=values.get("canceled_by", ""),
            canceled_at=number("canceled_at", float, None),
            stopped_at=number("stopped_at", float, None),
            retries=number("retries", int, 0),
            callback_url=values.get("callback_url", ""),
            callback_state=values.get("callback_state", ""),
            callback_attempts=number("callback_attempts", int, 0),
            callback_error=values.get("callback_error", ""),
        )


def _queued_fields(record: JobRecord) -> dict[Any, Any]:
    """The hash fields of a new queued record."""
    fields = {
        "kind": record.kind,
        "state": record.state,
        "enqueued_at": repr(record.enqueued_at),
        "attempts": record.attempts,
        "bytes_done": 0,
        "bytes_total": record.bytes_total,
        "arguments": json.dumps(record.arguments, sort_keys=True),
    }
    if record.callback_url:
        fields["callback_url"] = record.callback_url
    return fields


def _mapping_or_none(value: Any, name: str) -> Any:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"field {name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: The record field where an attempt leaves what a redelivered attempt needs (a remote's
#: confirmation, the ref of an artifact already moved); workers only, never shown.
CHECKPOINT_FIELD = "checkpoint"


def _lua(text: str) -> str:
    """A record script with the state names of this module put in (``{SUCCEEDED}``...), so
    they are spelled once; each becomes a quoted Lua string."""
    names = {
        "QUEUED": QUEUED,
        "RUNNING": RUNNING,
        "SUCCEEDED": SUCCEEDED,
        "FAILED": FAILED,
        "CANCELED": CANCELED,
        "CALLBACK_PENDING": CALLBACK_PENDING,
    }
    return _EVENT_LOG + text.format(**{name: json.dumps(value) for name, value in names.items()})


#: Entries a job's event log keeps at least (``XADD MAXLEN ~``).
EVENT_LOG_LENGTH = 500

# Every script that changes a record appends the record's snapshot (without the checkpoint)
# to the job's event log, a stream that expires with the record: what ``GET /jobs/{id}/events``
# reads, so a client that reconnects from an entry id misses nothing.
_EVENT_LOG = f"""
local function log_event(record, events)
  local fields = redis.call('HGETALL', record)
  for i = #fields - 1, 1, -2 do
    if fields[i] == '{CHECKPOINT_FIELD}' then
      table.remove(fields, i)
      table.remove(fields, i)
    end
  end
  redis.call('XADD', events, 'MAXLEN', '~', {EVENT_LOG_LENGTH}, '*', unpack(fields))
  local ttl = redis.call('PTTL', record)
  if ttl > 0 then redis.call('PEXPIRE', events, ttl) end
end
"""


# Progress and start only apply to a job that has not ended: a late update from a
# worker that lost its message must never turn a finished record back.
# KEYS: the record. ARGV: field, value, field, value...
_UPDATE_UNLESS_FINAL = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == {SUCCEEDED} or state == {FAILED} or state == {CANCELED} then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
log_event(KEYS[1], KEYS[2])
return 1
""")

# A final state is written once: when two attempts of one job overlap (a message
# redelivered while its first worker still runs), the first to end decides the record.
# KEYS: the record, the events channel. ARGV: retention seconds, the event, then field, value...
_FINISH = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if state == {SUCCEEDED} or state == {FAILED} or state == {CANCELED} then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
log_event(KEYS[1], KEYS[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
""")

# KEYS: the record, the recent-jobs index, the events channel, the job's event log, and optionally a key the
# worker reads before it runs the job (an owner's tombstone). ARGV: started_at, worker, kind,
# enqueued_at, job id, record TTL, the event. Returns the attempt number (-1 for a job that
# had ended) and that key's value; a start is announced in the same step.
_START = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if state == {SUCCEEDED} or state == {FAILED} or state == {CANCELED} then return {{-1, false}} end
redis.call('HSET', KEYS[1], 'state', {RUNNING}, 'started_at', ARGV[1], 'worker', ARGV[2],
           'bytes_done', '0')
if not state then
  redis.call('HSET', KEYS[1], 'kind', ARGV[3], 'enqueued_at', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PUBLISH', KEYS[3], ARGV[7])
log_event(KEYS[1], KEYS[4])
local read = false
if KEYS[5] then read = redis.call('GET', KEYS[5]) end
return {{attempt, read}}
""")


# ---------------------------------------------------------------------- cancel, retry, enqueue once
# Each is one script, so it and a worker's start or end of the same job (also scripts) happen
# one after the other: a job ends in exactly one final state.

# KEYS: the record, the events channel. ARGV: now, who, retention seconds, the event.
# Returns {1, the state it had} when it canceled, {0, the final state} when the job had
# ended, {-1, ''} for no record.
_CANCEL = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {{-1, ''}} end
if state == {SUCCEEDED} or state == {FAILED} or state == {CANCELED} then return {{0, state}} end
redis.call('HSET', KEYS[1], 'state', {CANCELED}, 'canceled_by', ARGV[2], 'canceled_at', ARGV[1],
           'finished_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
log_event(KEYS[1], KEYS[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return {{1, state}}
""")

# The attempt that ran when its job was canceled has stopped and cleaned up; what it did
# (a maintenance job's partial report) is its result. Once only, and only for a canceled job.
# KEYS: the record, the events channel. ARGV: now, the result (JSON or ''), the event.
_STOPPED = _lua("""
if redis.call('HGET', KEYS[1], 'state') ~= {CANCELED} then return 0 end
if redis.call('HEXISTS', KEYS[1], 'stopped_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'stopped_at', ARGV[1], 'result', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
""")

# A failed or canceled job queued again under its id, with its message, in one step: the
# record back to queued (attempts and checkpoint kept), the message on its queue (Dramatiq's
# layout: the payload in the queue's hash, its id on the queue's list), its dead letter gone.
# KEYS: the record, the recent-jobs index, the queue's messages hash, the queue's list, the
# dead-letter set, the dead-letter messages hash, the events channel.
# ARGV: now, the message's Redis id, its payload, its dead letter's id (or ''), record TTL,
# the event, the job id. Returns {1, the state it had}, {0, its state} when it is not failed or canceled,
# {-1, ''} for no record.
_RETRY = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {{-1, ''}} end
if state ~= {FAILED} and state ~= {CANCELED} then return {{0, state}} end
redis.call('HDEL', KEYS[1], 'started_at', 'finished_at', 'result', 'error', 'worker', 'canceled_by',
           'canceled_at', 'stopped_at', 'callback_state', 'callback_attempts', 'callback_error')
redis.call('HSET', KEYS[1], 'state', {QUEUED}, 'bytes_done', '0')
redis.call('HINCRBY', KEYS[1], 'retries', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[7])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('HDEL', KEYS[6], ARGV[4])
end
log_event(KEYS[1], KEYS[8])
redis.call('PUBLISH', KEYS[7], ARGV[6])
return {{1, state}}
""")

# An enqueue under a client's idempotency key: the key (holding the request's fingerprint
# and the job id, for the retention time), the queued record and the message, all or none.
# KEYS: the key, the record, the recent-jobs index, the queue's messages hash, the queue's list.
# ARGV: job id, fingerprint, key TTL, record TTL, enqueued_at, the message's Redis id, its
# payload, then the record's field, value... Returns {1, fingerprint, job id} when it
# enqueued, {0, fingerprint, job id} of the request the key already holds.
_ENQUEUE_ONCE = (
    _EVENT_LOG
    + """
local held = redis.call('GET', KEYS[1])
if held then
  local space = string.find(held, ' ', 1, true)
  return {0, string.sub(held, 1, space - 1), string.sub(held, space + 1)}
end
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[1], 'EX', ARGV[3])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
redis.call('RPUSH', KEYS[5], ARGV[6])
log_event(KEYS[2], KEYS[6])
return {1, ARGV[2], ARGV[1]}
"""
)

# The callback of a job that ended, queued once per end: its state set to pending and its
# message on the callbacks queue in one step (a retried job's new end sends a new one).
# KEYS: the record, the queue's messages hash, the queue's list. ARGV: the message's Redis
# id, its payload. Returns 1 when it queued, 0 when the job has not ended or its callback
# was already queued.
_QUEUE_CALLBACK = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= {SUCCEEDED} and state ~= {FAILED} and state ~= {CANCELED} then return 0 end
if redis.call('HSETNX', KEYS[1], 'callback_state', {CALLBACK_PENDING}) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
""")


class JobRecords:
    """Reads and writes job records.

    Parameters:
      client(redis.Redis): the Redis client.
      namespace(str): the key prefix.
      retention_seconds(float): how long a record is kept after its job ended.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, retention_seconds: float = 86400.0):
        self.client = client
        self.namespace = namespace
        self.retention_seconds = retention_seconds
        self.index_key = f"{namespace}:jobs"
        self.channel = f"{namespace}:job-events"
        self._update = client.register_script(_UPDATE_UNLESS_FINAL)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._stopped = client.register_script(_STOPPED)
        self._retry = client.register_script(_RETRY)
        self._enqueue_once = client.register_script(_ENQUEUE_ONCE)
        self._queue_callback = client.register_script(_QUEUE_CALLBACK)

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def events_key(self, job_id: str) -> str:
        """The job's event log: a stream of record snapshots, one per change."""
        return f"{self.key(job_id)}:events"

    def events_after(self, job_id: str, last_id: str, block_ms: int | None = None) -> list[tuple[str, JobRecord]]:
        """The job's events after entry ``last_id`` (``"0"``: all), oldest first, as (entry
        id, record); with ``block_ms``, waits that long at most for one when there is none."""
        found = self.client.xread({self.events_key(job_id): last_id}, block=block_ms)
        return [
            (_s(entry_id), JobRecord.from_hash(job_id, fields))
            for _, entries in cast("list[Any]", found or [])
            for entry_id, fields in entries
        ]

    def current_event(self, job_id: str) -> tuple[str, JobRecord] | None:
        """The record now and the id of the log's last entry (``"0"`` for none), read
        together; None for no record."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.key(job_id))
        pipe.xrevrange(self.events_key(job_id), count=1)
        data, last = pipe.execute()
        if not data:
            return None
        return (_s(last[0][0]) if last else "0"), JobRecord.from_hash(job_id, data)

    def create(self, record: JobRecord, pipe: Any = None) -> None:
        """Store a new queued record (in ``pipe`` when given, so it goes with the enqueue)."""
        target = pipe if pipe is not None else self.client.pipeline(transaction=True)
        key = self.key(record.id)
        target.hset(key, mapping=_queued_fields(record))
        target.expire(key, int(max(self.retention_seconds, UNFINISHED_RECORD_TTL_SECONDS)))
        target.zadd(self.index_key, {record.id: record.enqueued_at})
        target.zremrangebyscore(self.index_key, "-inf", record.enqueued_at - UNFINISHED_RECORD_TTL_SECONDS)
        events = self.events_key(record.id)
        target.xadd(events, _queued_fields(record), maxlen=EVENT_LOG_LENGTH, approximate=True)
        target.expire(events, int(max(self.retention_seconds, UNFINISHED_RECORD_TTL_SECONDS)))
        if pipe is None:
            target.execute()

    def started(self, job_id: str, *, worker: str, kind: str, enqueued_at: float) -> int:
        """Mark a job running and announce it; return its attempt number (-1 if it had already ended)."""
        return self.start(job_id, worker=worker, kind=kind, enqueued_at=enqueued_at)[0]

    def start(
        self, job_id: str, *, worker: str, kind: str, enqueued_at: float, read: str | None = None
    ) -> tuple[int, bytes | None]:
        """:meth:`started`, and the value of the key ``read`` (None: no key, or no value),
        read in the same round trip: what a worker must know before it runs the job."""
        ttl = int(max(self.retention_seconds, UNFINISHED_RECORD_TTL_SECONDS))
        keys = [
            self.key(job_id),
            self.index_key,
            self.channel,
            self.events_key(job_id),
            *([read] if read is not None else []),
        ]
        event = json.dumps({"id": job_id, "state": RUNNING})
        attempt, value = self._start(
            keys=keys, args=[repr(time.time()), worker, kind, repr(enqueued_at), job_id, ttl, event]
        )
        return int(attempt), value

    def progress(self, job_id: str, done: int, total: int) -> None:
        self._update(keys=[self.key(job_id), self.events_key(job_id)], args=["bytes_done", done, "bytes_total", total])

    def retrying(self, job_id: str, error: dict[str, str]) -> bool:
        """Mark a job retrying; ``False`` (and nothing changed) when it had ended."""
        if self._update(
            keys=[self.key(job_id), self.events_key(job_id)], args=["state", RETRYING, "error", json.dumps(error)]
        ):
            self._announce(job_id, RETRYING)
            return True
        return False

    def finished(self, job_id: str, *, state: str, result: Any = None, error: dict[str, str] | None = None) -> bool:
        """Record a job's end and announce it; the record expires after the retention time.

        Returns ``False`` (and changes nothing) when the record had already ended."""
        assert state in FINAL_STATES
        key = self.key(job_id)
        fields: dict[str, Any] = {"state": state, "finished_at": repr(time.time())}
        fields["result"] = json.dumps(result) if result is not None else ""
        fields["error"] = json.dumps(error) if error is not None else ""
        if state == SUCCEEDED and isinstance(result, dict):
            # A finished transfer's progress is complete, whatever the last report said.
            size = result.get("size_bytes")
            if isinstance(size, int):
                fields["bytes_done"] = size
                fields["bytes_total"] = size
        args: list[Any] = [max(1, int(self.retention_seconds)), json.dumps({"id": job_id, "state": state})]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._finish(keys=[key, self.channel, self.events_key(job_id)], args=args))

    def checkpoint(self, job_id: str) -> Any:
        """What an earlier attempt of the job saved with :meth:`save_checkpoint` (None if nothing)."""
        saved = self.client.hget(self.key(job_id), CHECKPOINT_FIELD)
        return json.loads(saved) if saved else None

    def save_checkpoint(self, job_id: str, value: Any) -> None:
        """Keep ``value`` (JSON) in the job's record for its redelivered attempts."""
        self.client.hset(self.key(job_id), CHECKPOINT_FIELD, json.dumps(value))

    def get(self, job_id: str) -> JobRecord | None:
        data = self.client.hgetall(self.key(job_id))
        if not data:
            return None
        return JobRecord.from_hash(job_id, data)

    def recent(self, *, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Recent jobs, newest first (records past their retention are gone)."""
        now = time.time()
        self.client.zremrangebyscore(self.index_key, "-inf", now - UNFINISHED_RECORD_TTL_SECONDS)
        records: list[JobRecord] = []
        stale: list[bytes] = []
        start = 0
        page = max(limit, 50)
        while len(records) < limit:
            ids = cast("list[bytes]", self.client.zrevrange(self.index_key, start, start + page - 1))
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self.key(_s(job_id)))
            for job_id, data in zip(ids, pipe.execute(), strict=True):
                if not data:
                    stale.append(job_id)
                    continue
                record = JobRecord.from_hash(_s(job_id), data)
                if (kind is None or record.kind == kind) and (state is None or record.state == state):
                    records.append(record)
                    if len(records) >= limit:
                        break
            start += page
        if stale:  # records that expired: drop them from the listing
            self.client.zrem(self.index_key, *stale)
        return records

    # ------------------------------------------------------------ cancel, retry, enqueue once

    def _record_ttl(self) -> int:
        return int(max(self.retention_seconds, UNFINISHED_RECORD_TTL_SECONDS))

    def cancel(self, job_id: str, *, by: str) -> tuple[bool, str]:
        """End a job that has not ended in state ``canceled``, saying ``by`` whom; return
        whether it did and the state the job had (its final state when it had ended).
        ``LookupError`` for no record."""
        event = json.dumps({"id": job_id, "state": CANCELED})
        retention = max(1, int(self.retention_seconds))
        done, state = self._cancel(
            keys=[self.key(job_id), self.channel, self.events_key(job_id)],
            args=[repr(time.time()), by, retention, event],
        )
        if int(done) < 0:
            raise LookupError(f"no job {job_id!r} (unknown, its record expired, or Redis lost it)")
        return bool(int(done)), _s(state)

    def is_canceled(self, job_id: str) -> bool:
        """Whether the job was canceled (what a running attempt checks now and then)."""
        return _s(self.client.hget(self.key(job_id), "state") or b"") == CANCELED

    def stopped(self, job_id: str, result: Any = None) -> bool:
        """Record that the attempt running as the job was canceled stopped, with what it did."""
        event = json.dumps({"id": job_id, "state": CANCELED, "stopped": True})
        payload = json.dumps(result) if result is not None else ""
        return bool(self._stopped(keys=[self.key(job_id), self.channel], args=[repr(time.time()), payload, event]))

    def requeue(
        self, job_id: str, *, queue_keys: tuple[str, str], payload: tuple[str, bytes], dead_letter: tuple[str, str, str]
    ) -> tuple[bool, str]:
        """Queue a failed or canceled job again under its id: its record back to ``queued``
        and ``payload`` (Redis message id, encoded message) on the queue of ``queue_keys``
        (its messages hash and list), the dead letter (its id or '', the dead-letter set and
        hash) removed, in one script. Returns whether it did and the state the job had."""
        event = json.dumps({"id": job_id, "state": QUEUED})
        letter_id, letters, letter_messages = dead_letter
        done, state = self._retry(
            keys=[
                self.key(job_id),
                self.index_key,
                *queue_keys,
                letters,
                letter_messages,
                self.channel,
                self.events_key(job_id),
            ],
            args=[repr(time.time()), payload[0], payload[1], letter_id, self._record_ttl(), event, job_id],
        )
        if int(done) < 0:
            raise LookupError(f"no job {job_id!r} (unknown, its record expired, or Redis lost it)")
        return bool(int(done)), _s(state)

    def create_once(
        self,
        record: JobRecord,
        *,
        key: str,
        fingerprint: str,
        key_seconds: float,
        queue_keys: tuple[str, str],
        payload: tuple[str, bytes],
    ) -> tuple[bool, str, str]:
        """:meth:`create` and the enqueue of ``payload`` on the queue of ``queue_keys``, unless
        the idempotency ``key`` exists; the key is set (for ``key_seconds``) in the same script.
        Returns whether it enqueued, and the fingerprint and job id the key holds."""
        args: list[Any] = [
            record.id,
            fingerprint,
            max(1, int(key_seconds)),
            self._record_ttl(),
            repr(record.enqueued_at),
            payload[0],
            payload[1],
        ]
        for name, value in _queued_fields(record).items():
            args += [name, value]
        done, held, job_id = self._enqueue_once(
            keys=[key, self.key(record.id), self.index_key, *queue_keys, self.events_key(record.id)], args=args
        )
        return bool(int(done)), _s(held), _s(job_id)

    # ------------------------------------------------------------ completion callbacks

    def queue_callback(self, job_id: str, *, queue_keys: tuple[str, str], payload: tuple[str, bytes]) -> bool:
        """Put ``payload`` (Redis message id, encoded message) of the job's callback on the
        queue of ``queue_keys`` and mark it pending, once per end of the job, in one script;
        ``False`` (nothing queued) when the job has not ended or its callback was queued."""
        return bool(self._queue_callback(keys=[self.key(job_id), *queue_keys], args=[payload[0], payload[1]]))

    def callback_attempt(self, job_id: str) -> int:
        """Count one more attempt of the job's callback; return its number."""
        return int(self.client.hincrby(self.key(job_id), "callback_attempts", 1))

    def callback_outcome(self, job_id: str, state: str, error: str = "") -> None:
        """Record how the job's callback went (one of ``CALLBACK_STATES``) and its last error."""
        assert state in CALLBACK_STATES
        if self.client.exists(self.key(job_id)):  # never recreate a record that expired
            self.client.hset(self.key(job_id), mapping={"callback_state": state, "callback_error": error})

    def _announce(self, job_id: str, state: str) -> None:
        self.client.publish(self.channel, json.dumps({"id": job_id, "state": state}))
