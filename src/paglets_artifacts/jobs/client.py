"""The host side of the job system: enqueue a job, follow it, wait for its result.

A call on :class:`ArtifactJobs` only validates its arguments (no file I/O, no hashing)
and writes one Redis transaction: the queued job record and the Dramatiq message, or for
:meth:`ArtifactJobs.enqueue_many` those of every job of the batch, all or none. Workers
(``workers/``) run the job; its record tells how it went.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from ..errors import IdempotencyConflict, InvalidInput, JobCanceled, JobConflict, JobTimeout, error_class
from ..redaction import MASK, redact_url
from ..redis_client import connect_redis
from ..settings import Settings
from . import contract
from .callbacks import check_callback_url
from .dead_letters import DeadLetters, QueueKeys, delivery, fresh_delivery
from .records import CANCELED, FAILED, JobRecord, JobRecords

#: Longest idempotency key a client may choose.
MAX_IDEMPOTENCY_KEY_LENGTH = 200


def who() -> str:
    """Who cancels or retries from this process, by default: ``user@host:pid``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


#: Pause between two attempts to reach Redis while a caller waits for a job.
RECONNECT_DELAY_SECONDS = 0.2


def connect(settings: Settings, url: str | None = None) -> redis.Redis:
    """The Redis client of a host, the CLI or the HTTP host (``url`` defaults to
    ``settings.redis_url``; plain or Sentinel, see :mod:`paglets_artifacts.redis_client`):
    connecting and every command give up after
    ``settings.redis_timeout_seconds`` with ``redis.TimeoutError``, so a hung Redis is an
    error, never a hung caller. Waits that are meant to be long (``Job.wait`` on pub/sub)
    pass their own shorter timeouts to each read."""
    return connect_redis(settings, url, timeout=settings.redis_timeout_seconds)


class Job:
    """A handle on one enqueued job.

    Parameters:
      jobs(ArtifactJobs): the client that enqueued or found it.
      job_id(str): the job id (the Dramatiq message id).
      replayed(bool): found by an enqueue under an idempotency key the job already held.
    """

    def __init__(self, jobs: ArtifactJobs, job_id: str, *, replayed: bool = False):
        self._jobs = jobs
        self.id = job_id
        #: Whether an enqueue under an idempotency key found this job instead of making one.
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobRecord:
        """The job's current record (``LookupError`` if unknown or past retention)."""
        record = self._jobs.records.get(self.id)
        if record is None:
            raise LookupError(f"no job {self.id!r} (unknown, its record expired, or Redis lost it)")
        return record

    def cancel(self, *, by: str | None = None) -> JobRecord:
        """Cancel the job and return its record, now ``canceled`` (final) with ``canceled_by``
        (``by``, default :func:`who`) and ``canceled_at``.

        A queued job never starts; a running one stops at its next progress report or item
        (within about a second), removes its ``.part``, releases its quota reservation and
        leaves no artifact, then sets ``stopped_at`` (and, for a maintenance job, its result:
        what it did until then). A job that already ended raises ``JobConflict`` (its
        ``state`` says how it ended) and nothing changes; ``LookupError`` for an unknown job.
        The cancel and a worker's end of the job are each one Redis script: whichever comes
        first decides the one final state."""
        done, state = self._jobs.records.cancel(self.id, by=by if by is not None else who())
        if not done:
            raise JobConflict(f"job {self.id} already ended ({state}); nothing was canceled", state=state)
        return self.status()

    def retry(self) -> JobRecord:
        """Run a failed or canceled job again under the same id and return its record, queued
        again (``retries`` counts these). The message is the one Dramatiq dead-lettered when
        it still holds it (the whole arguments, a pre-signed URL's secret included), else it
        is made from the record's arguments; a job whose record keeps a URL with its secret
        masked and whose dead letter is gone cannot be retried (``JobConflict``: enqueue it
        again). An import retried makes its one artifact under its job id, as a redelivery
        does. ``JobConflict`` for a job in any other state; ``LookupError`` for an unknown one."""
        record = self.status()
        if record.state not in (FAILED, CANCELED):
            raise JobConflict(
                f"job {self.id} is {record.state}: only a failed or canceled job can be retried", state=record.state
            )
        kind = contract.KINDS.get(record.kind)
        if kind is None:
            raise JobConflict(
                f"job {self.id} has no known kind ({record.kind!r}); it cannot be retried", state=record.state
            )
        keys = QueueKeys.of(self._jobs.settings.namespace, kind.queue_name)
        found = self._jobs.dead_letters.find_job(self.id, kind.queue_name)
        if found is not None:
            letter_id, message = found
        else:
            masked = kind.masked(record.arguments)
            if MASK in record.callback_url:
                masked = [*masked, "callback_url"]
            if masked:
                raise JobConflict(
                    f"job {self.id} cannot be retried: its record keeps {', '.join(masked)} with the secret masked "
                    "and its dead letter is gone; enqueue it again with the whole URL",
                    state=record.state,
                )
            letter_id = ""
            message = Message(
                queue_name=kind.queue_name,
                actor_name=kind.actor_name,
                args=(),
                kwargs=dict(record.arguments),
                options={"callback_url": record.callback_url} if record.callback_url else {},
                message_id=self.id,
                message_timestamp=int(record.enqueued_at * 1000),
            )
        done, state = self._jobs.records.requeue(
            self.id,
            queue_keys=keys.enqueue_keys,
            payload=fresh_delivery(message),
            dead_letter=(letter_id, keys.dead, keys.dead_messages),
        )
        if not done:  # it changed meanwhile (retried by someone else)
            raise JobConflict(f"job {self.id} is {state}: only a failed or canceled job can be retried", state=state)
        return self.status()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise its error.

        The error raised is of the job's error type (``QuotaExceeded``, ``ChecksumMismatch``,
        ...), ``JobCanceled`` for a canceled job; ``JobTimeout`` if it has not ended after
        ``timeout`` seconds. Waiting listens
        on the job-events channel and re-reads the record each second, so a lost
        notification costs at most a second. A Redis that restarts or drops the connection
        meanwhile is reconnected to until the deadline (its error is raised only then).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = None
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = self._jobs.client.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(self._jobs.records.channel)
                    record = self.status()
                    if record.done:
                        return _outcome(record)
                    remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                    if remaining <= 0:
                        raise JobTimeout(f"job {self.id} is still {record.state} after {timeout} s")
                    _wait_for_event(pubsub, self.id, remaining)
                except (redis.ConnectionError, redis.TimeoutError):
                    if pubsub is not None:
                        pubsub.close()
                        pubsub = None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    time.sleep(RECONNECT_DELAY_SECONDS)
        finally:
            if pubsub is not None:
                pubsub.close()


def _wait_for_event(pubsub: Any, job_id: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message and message.get("type") == "message":
            try:
                event = json.loads(message["data"])
            except ValueError:
                continue
            if event.get("id") == job_id:
                return


def _outcome(record: JobRecord) -> Any:
    if record.state == CANCELED:
        raise JobCanceled(f"job {record.id} was canceled by {record.canceled_by or 'someone'}")
    if record.state == FAILED:
        error = record.error or {}
        cls = error_class(str(error.get("type", "")))
        raise cls(f"{error.get('message') or 'job failed'}")
    return record.result


def request_fingerprint(kind: contract.JobKind, arguments: dict[str, Any]) -> str:
    """What makes two enqueues the same request: the kind and the checked arguments (hashed)."""
    text = json.dumps({"kind": kind.name, "arguments": arguments}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ArtifactJobs:
    """Enqueue artifact jobs and follow them.

    Parameters:
      redis_url(str|None): the Redis URL (default: ``settings.redis_url``).
      client(redis.Redis|None): an existing client to use instead of a URL.
      settings(Settings|None): namespace and retention (default: from the environment).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: redis.Redis | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings or Settings.from_env()
        self.client = client or connect(self.settings, redis_url)
        self.records = JobRecords(
            self.client,
            namespace=self.settings.namespace,
            retention_seconds=self.settings.job_retention_seconds,
        )
        # A broker with no middleware: the host only enqueues, it runs nothing.
        self.broker = RedisBroker(client=self.client, namespace=self.settings.namespace, middleware=[])
        #: Dramatiq's dead letters of the contract's queues.
        self.dead_letters = DeadLetters(self.client, self.records)

    # ---------------------------------------------------------------- job kinds

    def import_file(
        self,
        path: str,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        delete_source: bool = False,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Import a file under the allowed roots into the store."""
        return self.enqueue(
            contract.IMPORT,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            path=str(path),
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            delete_source=delete_source,
        )

    def import_files(self, imports: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Import many files in one round trip: one mapping of :meth:`import_file`'s
        arguments per file (``{"path": ..., "owner_agent_id": ...}``); see :meth:`enqueue_many`."""
        return self.enqueue_many(contract.IMPORT, imports)

    def exports(self, exports: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Export many artifacts in one round trip: one mapping of :meth:`export`'s arguments
        per artifact (``{"artifact_id": ..., "target": ...}``); see :meth:`enqueue_many`."""
        return self.enqueue_many(contract.EXPORT, exports)

    def delete_owners(self, owner_agent_ids: Sequence[str]) -> list[Job]:
        """Delete every artifact of each owner, one job per owner, in one round trip."""
        if isinstance(owner_agent_ids, (str, bytes)):
            raise InvalidInput("owner_agent_ids must be a list of owner ids, got one string")
        return self.enqueue_many(contract.DELETE_OWNER, [{"owner_agent_id": owner} for owner in owner_agent_ids])

    def export(
        self,
        artifact_id: str,
        target: str,
        *,
        expected_sha256: str | None = None,
        move: bool = False,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Export an artifact to a path under the allowed roots; ``move`` deletes it after."""
        return self.enqueue(
            contract.EXPORT,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            artifact_id=artifact_id,
            target=str(target),
            expected_sha256=expected_sha256,
            move=move,
        )

    def sweep(
        self, *, now: float | None = None, idempotency_key: str | None = None, callback_url: str | None = None
    ) -> Job:
        """Remove stale ``.part`` files, expired artifacts and orphans."""
        return self.enqueue(contract.SWEEP, idempotency_key=idempotency_key, callback_url=callback_url, now=now)

    def delete_owner(
        self, owner_agent_id: str, *, idempotency_key: str | None = None, callback_url: str | None = None
    ) -> Job:
        """Delete every artifact of an owner (a disposed paglet)."""
        return self.enqueue(
            contract.DELETE_OWNER,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            owner_agent_id=owner_agent_id,
        )

    def reindex(self, *, idempotency_key: str | None = None, callback_url: str | None = None) -> Job:
        """Rebuild the store's index from the files on disk."""
        return self.enqueue(contract.REINDEX, idempotency_key=idempotency_key, callback_url=callback_url)

    def reconcile(self, *, idempotency_key: str | None = None, callback_url: str | None = None) -> Job:
        """Re-enqueue or fail the jobs whose message Redis lost (after a failover)."""
        return self.enqueue(contract.RECONCILE, idempotency_key=idempotency_key, callback_url=callback_url)

    def import_url(
        self,
        url: str,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Pull an artifact from a remote host's ``GET /artifacts/{id}`` (or any allowed URL)."""
        return self.enqueue(
            contract.IMPORT_URL,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            url=url,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            expected_size=expected_size,
        )

    def export_to_host(
        self,
        artifact_id: str,
        host_url: str,
        *,
        owner_agent_id: str | None = None,
        name: str | None = None,
        expires_at: float | None = None,
        move: bool = False,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Push an artifact to a remote host's ``POST /artifacts``; ``move`` deletes it after."""
        return self.enqueue(
            contract.EXPORT_TO_HOST,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            artifact_id=artifact_id,
            host_url=host_url,
            owner_agent_id=owner_agent_id,
            name=name,
            expires_at=expires_at,
            move=move,
        )

    def checksum(self, path: str, *, idempotency_key: str | None = None, callback_url: str | None = None) -> Job:
        """Hash a file under the allowed roots; the result is ``{"path", "sha256", "size_bytes"}``."""
        return self.enqueue(
            contract.CHECKSUM, idempotency_key=idempotency_key, callback_url=callback_url, path=str(path)
        )

    def upload(
        self,
        path: str,
        host_url: str,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Upload a file under the allowed roots to a host's ``POST /artifacts`` (paglets'
        ``HostClient.upload_artifact``, run by a worker); the result is the remote ref."""
        return self.enqueue(
            contract.UPLOAD,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            path=str(path),
            host_url=host_url,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
        )

    def download(
        self,
        url: str,
        target: str,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        move: bool = False,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Download an artifact's URL to a path under the allowed roots, verified before it
        is renamed into place (paglets' ``HostClient.download_artifact``, run by a worker);
        ``move`` deletes the remote artifact after."""
        return self.enqueue(
            contract.DOWNLOAD,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            url=url,
            target=str(target),
            expected_sha256=expected_sha256,
            expected_size=expected_size,
            move=move,
        )

    # ---------------------------------------------------------------- generic

    def enqueue(
        self,
        kind: contract.JobKind,
        *,
        start_within_seconds: float | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        **arguments: Any,
    ) -> Job:
        """Validate ``arguments`` against ``kind`` and enqueue the job. With ``start_within_seconds``
        a worker that would start it for the first time later skips it and its record fails
        with ``JobExpired`` (a caller that stopped waiting wants no effect any more); once
        started, its redeliveries and retries run as any job's.

        With ``idempotency_key`` (a client's name for this request: 1 to 200 printable ASCII
        characters), an enqueue that finds the key held by the same request (same kind and
        arguments) within ``job_retention_seconds`` returns that job (``Job.replayed``)
        instead of a second one; a different request under the key is refused with
        ``IdempotencyConflict``. Key, record and message are written by one script.

        With ``callback_url`` (an http(s) URL under ``allowed_hosts``; it needs
        ``callback_secret``), the job's final record is POSTed there, signed, once it ends
        (:mod:`paglets_artifacts.jobs.callbacks`); ``InvalidInput`` names what is wrong with it."""
        message, record = self._prepare(kind, arguments, start_within_seconds, callback_url)
        if idempotency_key is not None:
            return self._enqueue_once(kind, message, record, idempotency_key)
        return self._send([(message, record)])[0]

    def enqueue_many(
        self,
        kind: contract.JobKind,
        arguments: Sequence[Mapping[str, Any]],
        *,
        start_within_seconds: float | None = None,
        callback_url: str | None = None,
    ) -> list[Job]:
        """Enqueue one job of ``kind`` per mapping of ``arguments`` (those :meth:`enqueue`
        takes as keywords) in one round trip; return their handles in the same order.

        Each job has its own record and result. Every item is validated before anything is
        written: one bad item raises ``InvalidInput`` naming its index and its problem, and
        nothing is enqueued. The records and messages of the batch are written in one Redis
        transaction, all or none. A batch holds at most ``contract.MAX_BATCH_JOBS`` jobs;
        an empty one enqueues nothing. With ``callback_url``, each job's final record is
        POSTed there once that job ends (see :meth:`enqueue`)."""
        if isinstance(arguments, (str, bytes, Mapping)) or not isinstance(arguments, Sequence):
            raise InvalidInput(f"a batch of {kind.name} jobs must be a list of argument objects")
        if len(arguments) > contract.MAX_BATCH_JOBS:
            raise InvalidInput(f"a batch holds at most {contract.MAX_BATCH_JOBS} jobs, got {len(arguments)}: split it")
        prepared = []
        for index, item in enumerate(arguments):
            try:
                prepared.append(self._prepare(kind, item, start_within_seconds, callback_url))
            except InvalidInput as exc:
                raise InvalidInput(f"item {index}: {exc}") from None
        return self._send(prepared)

    def _prepare(
        self, kind: contract.JobKind, arguments: Any, start_within_seconds: float | None, callback_url: str | None
    ) -> tuple[Message[Any], JobRecord]:
        """A job's message and queued record, its arguments validated; nothing written."""
        if not isinstance(arguments, Mapping):
            raise InvalidInput(f"{kind.name} job arguments must be an object, got {type(arguments).__name__}")
        values = kind.validate({key: value for key, value in arguments.items() if value is not None})
        sent = {key: value for key, value in values.items() if value is not None}
        now = time.time()
        options: dict[str, Any] = {} if start_within_seconds is None else {"start_by": now + start_within_seconds}
        if callback_url is not None:
            options["callback_url"] = check_callback_url(callback_url, self.settings)
        message: Message[Any] = Message(
            queue_name=kind.queue_name,
            actor_name=kind.actor_name,
            args=(),
            kwargs=sent,
            options=options,
            message_id=str(uuid.uuid4()),
            message_timestamp=int(now * 1000),
        )
        record = JobRecord(
            id=message.message_id,
            kind=kind.name,
            enqueued_at=now,
            arguments=kind.shown(sent),
            callback_url=redact_url(callback_url) if callback_url is not None else "",
        )
        return message, record

    def _send(self, prepared: list[tuple[Message[Any], JobRecord]]) -> list[Job]:
        """Write the records and messages in one transaction (a round trip, and one more
        when the pipeline checks that Redis has the broker's script)."""
        if not prepared:
            return []
        pipe = self.client.pipeline(transaction=True)
        for message, record in prepared:
            self.records.create(record, pipe)
            self._dispatch_enqueue(pipe, message)
        pipe.execute()
        return [Job(self, message.message_id) for message, _ in prepared]

    def _dispatch_enqueue(self, pipe: Any, message: Message[Any]) -> None:
        """What ``RedisBroker.enqueue`` does (without delay or middleware, which this broker
        has none of), its dispatch script queued in ``pipe`` rather than sent on its own."""
        broker = self.broker
        queued = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        args = [
            "enqueue",
            int(time.time() * 1000),
            queued.queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            0,  # no queue maintenance from a host: workers do it
            0,  # the unpack bound of the commands that unpack lists; enqueue unpacks none
            queued.options["redis_message_id"],
            queued.encode(),
        ]
        broker.scripts["dispatch"](keys=[broker.namespace], args=args, client=pipe)

    def _enqueue_once(self, kind: contract.JobKind, message: Message[Any], record: JobRecord, key: str) -> Job:
        # A different callback makes a different request; none leaves the fingerprint as it was.
        callback_url = message.options.get("callback_url")
        asked = message.kwargs if callback_url is None else {**message.kwargs, "callback_url": callback_url}
        fingerprint = request_fingerprint(kind, asked)
        done, held, job_id = self.records.create_once(
            record,
            key=self.idempotency_key(key),
            fingerprint=fingerprint,
            key_seconds=self.settings.job_retention_seconds,
            queue_keys=QueueKeys.of(self.settings.namespace, kind.queue_name).enqueue_keys,
            payload=delivery(message),
        )
        if not done and held != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {key!r} is held by job {job_id}, enqueued by a different request "
                "(another kind or other arguments); nothing was enqueued",
                job_id=job_id,
            )
        return Job(self, job_id, replayed=not done)

    def idempotency_key(self, key: str) -> str:
        """The Redis key of a client's idempotency key (``InvalidInput`` for a malformed one)."""
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidInput(f"an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
        if not (key.isascii() and key.isprintable()):
            raise InvalidInput(f"an idempotency key must be printable ASCII, got {key[:40]!r}")
        return f"{self.settings.namespace}:idempotency:{key}"

    def job(self, job_id: str) -> Job:
        """A job by id (from any process); ``LookupError`` if no record of it exists."""
        job = Job(self, str(job_id))
        job.status()
        return job

    def jobs(self, *, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Recent jobs, newest first."""
        return self.records.recent(limit=limit, kind=kind, state=state)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ArtifactJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
