"""The Redis broker and its middleware, set up from the environment.

Importing this module sets the global Dramatiq broker, as ``dramatiq workers`` expects.
"""

from __future__ import annotations

import errno
import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications, TimeLimit

from paglets_artifacts.errors import TransferError
from paglets_artifacts.settings import Settings

from .logs import StructuredLogs
from .metrics import Metrics
from .middleware import JobRecordsMiddleware

#: OS errors worth another try: the resource may be back in a moment.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ESTALE}
)


def is_transient(exception: BaseException) -> bool:
    """Broker and network hiccups and EAGAIN-like OS errors retry; everything else fails at once."""
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


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with the standard middleware, job records, and retries of transient errors only."""

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
        Retries(min_backoff=settings.min_backoff_ms, max_backoff=settings.max_backoff_ms, retry_when=retry_when),
    ]
    return RedisBroker(
        url=settings.redis_url,
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=middleware,
    )


settings = Settings.from_env()
logging.getLogger("paglets_artifacts").setLevel(logging.INFO)
broker = make_broker(settings)
dramatiq.set_broker(broker)
