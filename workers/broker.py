"""The Redis broker and its middleware, and which errors are retried.

Importing this module builds nothing: :mod:`workers.registry` builds the broker of a
worker process with :func:`make_broker` and makes it Dramatiq's.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ActorNotFound, ConnectionClosed, DecodeError
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from paglets_artifacts.errors import TransferError, Transient
from paglets_artifacts.redis_client import connect_redis
from paglets_artifacts.settings import Settings

from .context import WORKER_HEALTH_CHECK_SECONDS
from .logs import StructuredLogs
from .metrics import Metrics
from .middleware import JobRecordsMiddleware, retry_while_unreachable

#: OS errors worth another try: the resource may be back in a moment.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ESTALE}
)


def is_transient(exception: BaseException) -> bool:
    """Whether a job that raised ``exception`` is retried with backoff: a :class:`Transient`,
    or a Redis, network or OS hiccup (EAGAIN-like errnos). Everything else fails at once."""
    if isinstance(exception, Transient):
        return True
    if isinstance(exception, TransferError):
        return False
    if isinstance(exception, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return True
    try:
        import httpx

        if isinstance(exception, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exception, OSError) and exception.errno in TRANSIENT_ERRNOS


class PatientRetries(Retries):
    """Dramatiq's ``Retries``, except that enqueueing the retry waits for an unreachable
    Redis (a restart, a failover) instead of failing: the message is acknowledged right
    after this hook, so a retry that is not enqueued would be a job lost for good.

    Parameters: those of ``Retries``.
    """

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        if isinstance(exception, ActorNotFound):
            # Dramatiq's Retries looks the actor up again and fails, so the message would be
            # acknowledged and lost: it goes to the dead-letter queue instead, to be seen there.
            logging.getLogger("paglets_artifacts.jobs").error(
                "message %s names no actor %r; moved to the dead-letter queue", message.message_id, message.actor_name
            )
            message.fail()
            return
        super().after_process_message(_PatientEnqueue(broker), message, result=result, exception=exception)


class _PatientEnqueue:
    """The broker, with an ``enqueue`` that retries while Redis cannot be reached."""

    def __init__(self, broker: Any):
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        sent: list[Any] = []
        retry_while_unreachable(
            lambda: sent.append(self._broker.enqueue(message, delay=delay)), f"the retry of job {message.message_id}"
        )
        return sent[0] if sent else None


class TolerantRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose consumers move an undecodable message to the
    dead-letter queue and go on. Dramatiq's own consumer restarts instead, and strands the
    messages it had prefetched with the bad one until the worker process dies.

    Parameters: those of ``RedisBroker``.
    """

    @property
    def consumer_class(self) -> type:
        return _TolerantConsumer


class _TolerantConsumer(_RedisConsumer):
    def __next__(self) -> Any:
        while True:
            try:
                return super().__next__()
            except DecodeError as exc:
                self._dead_letter(exc.data)

    def _dead_letter(self, data: Any) -> None:
        """Find the bad payload among this consumer's fetched messages and nack it."""
        broker = self.broker
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        payloads = f"{broker.namespace}:{self.queue_name}.msgs"
        try:
            for redis_id in broker.client.smembers(acks):
                if broker.client.hget(payloads, redis_id) == data:
                    broker.do_nack(self.queue_name, redis_id.decode())
                    logging.getLogger("paglets_artifacts.jobs").error(
                        "undecodable message %s on %s moved to the dead-letter queue",
                        redis_id.decode(),
                        self.queue_name,
                    )
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker (plain or through Sentinel: :func:`paglets_artifacts.redis_client.connect_redis`)
    with the standard middleware, job records, and retries of transient errors only."""

    def retry_when(retries: int, exception: BaseException) -> bool:
        return retries < settings.max_retries and is_transient(exception)

    middleware = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        StructuredLogs(settings),
        JobRecordsMiddleware(),  # before Retries: its after-hooks then run after Retries decided
        Metrics(settings),  # after job records (the result is still known), before Retries
        PatientRetries(min_backoff=settings.min_backoff_ms, max_backoff=settings.max_backoff_ms, retry_when=retry_when),
    ]
    return TolerantRedisBroker(
        client=connect_redis(settings, health_check_interval=WORKER_HEALTH_CHECK_SECONDS),
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=middleware,
    )
