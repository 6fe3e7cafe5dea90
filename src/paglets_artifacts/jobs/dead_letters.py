"""Dramatiq's dead letters: the messages it gave up on, listed, requeued or dropped.

A message is dead-lettered when its job failed for good (a permanent error, retries
exhausted, a transfer stopped by a cancel), when its payload cannot be decoded, or when it
names an actor no worker knows. Dramatiq's Redis broker keeps them per queue, in
``<ns>:<queue>.XQ`` (a sorted set of the messages' Redis ids by the time they were
dead-lettered) and ``<ns>:<queue>.XQ.msgs`` (id to payload), for its ``dead_message_ttl``
(7 days), after which its maintenance removes them. This module is the one place that
spells that layout (:class:`QueueKeys`), and the queues it looks at are the contract's.

A dead letter of a job whose record exists is requeued as :meth:`Job.retry` does it
(record back to ``queued`` under the same job id, one script); one without a record (an
unknown actor) goes back on its queue as it was; an undecodable one can only be dropped.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from dramatiq import Message
from dramatiq.brokers.redis import DEFAULT_DEAD_MESSAGE_TTL

from ..errors import InvalidInput, JobConflict
from ..redaction import redact_text
from . import contract
from .records import CANCELED, FAILED, JobRecords

#: The queues whose dead letters are looked at: those of the contract.
QUEUES: tuple[str, ...] = (contract.TRANSFER_QUEUE, contract.MAINTENANCE_QUEUE)
#: How long Dramatiq keeps a dead letter (its Redis broker's default), in seconds.
DEAD_LETTER_SECONDS = DEFAULT_DEAD_MESSAGE_TTL / 1000
#: How many bytes of an undecodable payload a listing shows.
SHOWN_PAYLOAD_BYTES = 200
#: Message options that belong to one delivery, not to the job: dropped when it is queued again.
_DELIVERY_OPTIONS = ("redis_message_id", "retries", "eta", "traceback", "start_by")


@dataclass(frozen=True)
class QueueKeys:
    """The Redis keys of one queue in the layout of Dramatiq's Redis broker."""

    queue: str
    messages: str
    dead: str
    dead_messages: str

    @classmethod
    def of(cls, namespace: str, queue_name: str) -> QueueKeys:
        base = f"{namespace}:{queue_name}"
        return cls(queue=base, messages=f"{base}.msgs", dead=f"{base}.XQ", dead_messages=f"{base}.XQ.msgs")

    @property
    def enqueue_keys(self) -> tuple[str, str]:
        """Where an enqueue writes: the messages hash, then the queue's list."""
        return (self.messages, self.queue)


@dataclass
class DeadLetter:
    """One dead-lettered message as an operator sees it.

    Parameters:
      id(str): its Redis message id (what requeue and drop take).
      queue(str): the queue it was dead-lettered from.
      dead_lettered_at(float): when, as a Unix time.
      expires_at(float): when Dramatiq's maintenance removes it.
      job_id(str): the job (the Dramatiq message id); empty for an undecodable payload.
      actor(str): the actor it names; ``kind`` the job kind of that actor ('' if none).
      arguments(dict): its keyword arguments, URLs redacted.
      state(str): its job record's state ('' without a record).
      error(dict|None): why it is here: the record's error, or what is wrong with the message.
    """

    id: str
    queue: str
    dead_lettered_at: float
    expires_at: float
    job_id: str = ""
    actor: str = ""
    kind: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    state: str = ""
    error: dict[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "dead_lettered_at": self.dead_lettered_at,
            "expires_at": self.expires_at,
            "job_id": self.job_id,
            "actor": self.actor,
            "kind": self.kind,
            "arguments": self.arguments,
            "state": self.state,
            "error": self.error,
        }


def decode(payload: bytes) -> Message[Any] | None:
    """The message of a payload, or None when it does not decode."""
    try:
        message = Message.decode(payload)
    except Exception:  # Dramatiq's DecodeError, and anything a hostile payload provokes
        return None
    return message if isinstance(message.kwargs, dict) else None


def delivery(message: Message[Any]) -> tuple[str, bytes]:
    """What an enqueue writes for ``message``, as Dramatiq's ``RedisBroker.enqueue`` does: a
    new Redis id (each delivery has its own) and the payload carrying it."""
    redis_id = str(uuid.uuid4())
    return redis_id, message.copy(options={"redis_message_id": redis_id}).encode()


def fresh_delivery(message: Message[Any]) -> tuple[str, bytes]:
    """:func:`delivery` of a message queued again: on its own queue (not the delay queue),
    without what belonged to its last delivery (Redis id, retry count, ETA, start deadline)."""
    options = {name: value for name, value in message.options.items() if name not in _DELIVERY_OPTIONS}
    queue_name = message.queue_name.removesuffix(".DQ")
    return delivery(dataclasses.replace(message, queue_name=queue_name, options=options))


class DeadLetters:
    """The dead letters of the contract's queues.

    Parameters:
      client(redis.Redis): the Redis client.
      records(JobRecords): the job records (their namespace is the queues').
    """

    def __init__(self, client: redis.Redis, records: JobRecords):
        self.client = client
        self.records = records
        self.keys = {queue: QueueKeys.of(records.namespace, queue) for queue in QUEUES}

    def list(self, *, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters of every queue, newest first."""
        found: list[tuple[float, str, str]] = []
        for queue, keys in self.keys.items():
            entries = cast("list[tuple[bytes, float]]", self.client.zrevrange(keys.dead, 0, limit - 1, withscores=True))
            found += [(score, queue, member.decode()) for member, score in entries]
        found.sort(reverse=True)
        letters = []
        for score, queue, letter_id in found[:limit]:
            payload = cast("bytes | None", self.client.hget(self.keys[queue].dead_messages, letter_id))
            if payload is not None:
                letters.append(self._describe(letter_id, queue, score / 1000, payload))
        return letters

    def get(self, letter_id: str) -> DeadLetter:
        """One dead letter by id (``LookupError`` if no queue holds it)."""
        queue, payload = self._payload(letter_id)
        score = self.client.zscore(self.keys[queue].dead, letter_id) or time.time() * 1000
        return self._describe(letter_id, queue, float(score) / 1000, payload)

    def find_job(self, job_id: str, queue: str) -> tuple[str, Message[Any]] | None:
        """The dead letter of a job on ``queue`` (its id and message), if Dramatiq holds one."""
        keys = self.keys.get(queue)
        if keys is None:
            return None
        needle = json.dumps(job_id).encode()
        for letter_id, payload in self.client.hscan_iter(keys.dead_messages):
            if needle not in payload:  # cheap before decoding
                continue
            message = decode(payload)
            if message is not None and message.message_id == job_id:
                return letter_id.decode(), message
        return None

    def requeue(self, letter_id: str) -> str:
        """Queue a dead letter again; return its job id. A job with a record goes back as a
        retry does (``JobConflict`` unless it failed or was canceled); an undecodable payload
        is ``InvalidInput`` (drop it)."""
        queue, payload = self._payload(letter_id)
        message = decode(payload)
        if message is None:
            raise InvalidInput(f"dead letter {letter_id} does not decode as a message; it can only be dropped")
        keys = self.keys[queue]
        delivery = fresh_delivery(message)
        record = self.records.get(message.message_id)
        if record is None:  # no job record: an unknown actor's message, back as it was
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(keys.messages, delivery[0], delivery[1])
            pipe.rpush(keys.queue, delivery[0])
            pipe.zrem(keys.dead, letter_id)
            pipe.hdel(keys.dead_messages, letter_id)
            pipe.execute()
            return message.message_id
        done, state = self.records.requeue(
            message.message_id,
            queue_keys=keys.enqueue_keys,
            payload=delivery,
            dead_letter=(letter_id, keys.dead, keys.dead_messages),
        )
        if not done:
            raise JobConflict(
                f"job {message.message_id} of dead letter {letter_id} is {state}: only a failed or canceled job "
                "is queued again",
                state=state,
            )
        return message.message_id

    def drop(self, letter_id: str) -> None:
        """Remove a dead letter for good (``LookupError`` if no queue holds it)."""
        queue, _ = self._payload(letter_id)
        keys = self.keys[queue]
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(keys.dead, letter_id)
        pipe.hdel(keys.dead_messages, letter_id)
        pipe.execute()

    def _payload(self, letter_id: str) -> tuple[str, bytes]:
        for queue, keys in self.keys.items():
            payload = cast("bytes | None", self.client.hget(keys.dead_messages, letter_id))
            if payload is not None:
                return queue, payload
        raise LookupError(f"no dead letter {letter_id!r} (unknown, requeued, dropped, or past its 7 days)")

    def _describe(self, letter_id: str, queue: str, at: float, payload: bytes) -> DeadLetter:
        letter = DeadLetter(id=letter_id, queue=queue, dead_lettered_at=at, expires_at=at + DEAD_LETTER_SECONDS)
        message = decode(payload)
        if message is None:
            shown = redact_text(payload[:SHOWN_PAYLOAD_BYTES].decode("utf-8", "replace"))
            letter.error = {"type": "Undecodable", "message": f"the payload is not a message: {shown!r}"}
            return letter
        letter.job_id = message.message_id
        letter.actor = message.actor_name
        kind = contract.KINDS_BY_ACTOR.get(message.actor_name)
        letter.kind = kind.name if kind is not None else ""
        letter.arguments = kind.shown(message.kwargs) if kind is not None else {}
        if kind is None:
            letter.error = {"type": "ActorNotFound", "message": f"no job kind has the actor {message.actor_name!r}"}
            return letter
        try:
            record = self.records.get(message.message_id)
        except InvalidInput:
            record = None
        if record is not None:
            letter.state = record.state
            letter.error = record.error
        if letter.error is None and letter.state not in (FAILED, CANCELED):
            letter.error = {"type": "Unknown", "message": "Dramatiq gave up on it; its job record says nothing more"}
        return letter
