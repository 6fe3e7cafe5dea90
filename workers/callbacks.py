"""Completion callbacks: the actor that POSTs a job's final record to its ``callback_url``.

The job records middleware queues one callback per end of a job that names a URL
(:func:`queue_callback`, one Redis script that marks it pending and enqueues it), on a
queue of its own, so a slow or failing receiver never holds up a job. Each attempt signs
the record's JSON (:mod:`paglets_artifacts.jobs.callbacks`) and POSTs it, without
following redirects, with ``settings.callback_timeout_seconds`` per read; a 2xx answer
delivers it. A 5xx, 408 or 429 answer, a connection error or a timeout is retried with the
jobs' backoff, up to ``settings.callback_max_attempts`` attempts in all; any other answer
is final. The job record tells how it went: ``callback_state``, ``callback_attempts``,
``callback_error``; each attempt is also logged with the job id.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import redis
from dramatiq import Message

from paglets_artifacts.jobs.callbacks import signed_headers
from paglets_artifacts.jobs.dead_letters import QueueKeys, delivery
from paglets_artifacts.jobs.records import CALLBACK_DELIVERED, CALLBACK_FAILED, CALLBACK_RETRYING
from paglets_artifacts.origins import host_allowed
from paglets_artifacts.redaction import redact_text, redact_url
from paglets_artifacts.settings import Settings

from .context import context

logger = logging.getLogger("paglets_artifacts.jobs")

#: The queue of callbacks (``<namespace>:artifact-callbacks`` in Redis) and their actor.
CALLBACK_QUEUE = "artifact-callbacks"
CALLBACK_ACTOR = "deliver_callback"
#: Largest record a callback carries.
MAX_CALLBACK_BODY_BYTES = 1024 * 1024
#: Most bytes of a receiver's answer that are read.
MAX_ANSWER_BYTES = 64 * 1024
#: Answers of a receiver that mean "try again later".
RETRIED_STATUSES = frozenset({408, 429})


class CallbackRetry(Exception):
    """An attempt failed in a way worth another try (5xx, 408, 429, connection, timeout)."""


class CallbackRefused(Exception):
    """An attempt failed for good (any other answer, a URL no longer allowed, a record too large)."""


def queue_callback(job_id: str, message: Any) -> None:
    """Queue the callback of a job that ended, if its message names a ``callback_url``
    (once per end: a redelivered message queues nothing more)."""
    url = message.options.get("callback_url")
    if not url:
        return
    ctx = context()
    callback: Message[Any] = Message(
        queue_name=CALLBACK_QUEUE,
        actor_name=CALLBACK_ACTOR,
        args=(),
        kwargs={"job_id": job_id, "url": url},
        options={},
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    )
    keys = QueueKeys.of(ctx.settings.namespace, CALLBACK_QUEUE).enqueue_keys
    if ctx.records.queue_callback(job_id, queue_keys=keys, payload=delivery(callback)):
        logger.info("job %s callback to %s queued", job_id, redact_url(url))


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to ``url`` and return the answer's status (redirects are answers, not
    followed); at most :data:`MAX_ANSWER_BYTES` of the answer are read."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_ANSWER_BYTES)
        return response.status
    finally:
        connection.close()


def attempt(settings: Settings, job_id: str, url: str, record: dict[str, Any]) -> None:
    """One attempt: sign ``record`` and POST it; ``CallbackRetry`` or ``CallbackRefused`` if it failed."""
    if not settings.callback_secret:
        raise CallbackRefused("PAGLETS_ARTIFACTS_CALLBACK_SECRET is not set on the worker; nothing was sent")
    if not host_allowed(url, settings.allowed_hosts):
        raise CallbackRefused("its host is not in the worker's PAGLETS_ARTIFACTS_ALLOWED_HOSTS; nothing was sent")
    body = json.dumps(record, sort_keys=True).encode()
    if len(body) > MAX_CALLBACK_BODY_BYTES:
        raise CallbackRefused(f"the record is {len(body)} bytes, more than {MAX_CALLBACK_BODY_BYTES}; nothing was sent")
    try:
        status = post(
            url, body, signed_headers(settings.callback_secret, job_id, body), settings.callback_timeout_seconds
        )
    except TimeoutError:
        raise CallbackRetry(f"no answer within {settings.callback_timeout_seconds:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CallbackRetry(f"{type(exc).__name__}: {redact_text(str(exc)) or 'connection failed'}") from None
    if 200 <= status < 300:
        return
    if status >= 500 or status in RETRIED_STATUSES:
        raise CallbackRetry(f"HTTP {status}")
    raise CallbackRefused(f"HTTP {status} (final)")


def deliver_callback(job_id: str, url: str) -> None:
    """The actor: one attempt at the callback of ``job_id``, its outcome on the record."""
    ctx = context()
    settings = ctx.settings
    record = ctx.records.get(job_id)
    if record is None:
        logger.warning("job %s callback dropped: its record expired", job_id)
        return
    number = ctx.records.callback_attempt(job_id)
    record.callback_attempts = number
    shown = redact_url(url)
    try:
        attempt(settings, job_id, url, record.to_wire())
    except CallbackRetry as exc:
        if number < settings.callback_max_attempts:
            ctx.records.callback_outcome(job_id, CALLBACK_RETRYING, str(exc))
            logger.warning("job %s callback to %s failed (attempt %d), will be retried: %s", job_id, shown, number, exc)
            raise
        ctx.records.callback_outcome(job_id, CALLBACK_FAILED, f"{exc} (after {number} attempts)")
        logger.error("job %s callback to %s failed after %d attempts: %s", job_id, shown, number, exc)
    except CallbackRefused as exc:
        ctx.records.callback_outcome(job_id, CALLBACK_FAILED, str(exc))
        logger.error("job %s callback to %s failed (attempt %d): %s", job_id, shown, number, exc)
    else:
        ctx.records.callback_outcome(job_id, CALLBACK_DELIVERED)
        logger.info("job %s callback to %s delivered (attempt %d)", job_id, shown, number)


def _retry_when(retries: int, exception: BaseException) -> bool:
    return isinstance(exception, (CallbackRetry, redis.ConnectionError, redis.TimeoutError))


def register(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Actor:
    """Declare the callback actor on ``broker``: its own queue, its own retries."""
    return dramatiq.actor(  # type: ignore[call-overload]  # dramatiq's overloads want a typed function
        deliver_callback,
        actor_name=CALLBACK_ACTOR,
        queue_name=CALLBACK_QUEUE,
        broker=broker,
        max_retries=settings.callback_max_attempts,
        retry_when=_retry_when,
        min_backoff=settings.min_backoff_ms,
        max_backoff=settings.max_backoff_ms,
        time_limit=int((3 * settings.callback_timeout_seconds + 30) * 1000),
    )
