"""The small-job benchmark's baseline: a plain Dramatiq no-op actor, none of the project's code.

A bare ``RedisBroker`` with Dramatiq's default middleware; the actor counts its calls with
one ``INCR``. Run as ``python -m dramatiq benchmarks.plain_noop_actor -p 1 -t 8`` with
``REDIS_URL`` and ``PLAIN_NOOP_NAMESPACE`` set (see ``bench_small_jobs.py``).
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

QUEUE = "plain-noop"
ACTOR = "plain_noop"


def counter_key(namespace: str) -> str:
    return f"{namespace}:plain-noop-done"


if os.environ.get("PLAIN_NOOP_NAMESPACE"):  # in the worker: declare the actor
    _namespace = os.environ["PLAIN_NOOP_NAMESPACE"]
    broker = RedisBroker(url=os.environ["REDIS_URL"], namespace=_namespace)
    dramatiq.set_broker(broker)
    _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    _counter = counter_key(_namespace)

    @dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker)
    def plain_noop() -> None:
        _client.incr(_counter)
