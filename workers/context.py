"""What every actor in a worker process shares: settings, Redis, the store, job records."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

import redis

from paglets_artifacts.jobs.records import JobRecords
from paglets_artifacts.redis_client import connect_redis
from paglets_artifacts.settings import Settings, SettingsError
from paglets_artifacts.store.artifacts import ArtifactStore

#: Seconds after which a worker's idle Redis connection is checked (PING) before it is used
#: again: a connection to a master that died or was demoted is then replaced at once.
WORKER_HEALTH_CHECK_SECONDS = 30


@dataclass
class WorkerContext:
    """Per-process state of a worker, built once from the environment.

    Parameters:
      settings(Settings): the configuration every process shares.
      client(redis.Redis): Redis for job records, tombstones and the index.
      store(ArtifactStore): the store on the shared volume.
      records(JobRecords): job record writer.
    """

    settings: Settings
    client: redis.Redis
    store: ArtifactStore
    records: JobRecords

    @property
    def worker_name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def tombstone_key(self, owner_agent_id: str) -> str:
        return f"{self.settings.namespace}:owner-deleted:{owner_agent_id}"


def build_context(settings: Settings) -> WorkerContext:
    client = connect_redis(settings, health_check_interval=WORKER_HEALTH_CHECK_SECONDS)
    store = ArtifactStore.from_settings(settings, redis=client)
    records = JobRecords(client, namespace=settings.namespace, retention_seconds=settings.job_retention_seconds)
    return WorkerContext(settings=settings, client=client, store=store, records=records)


@functools.cache
def worker_settings() -> Settings:
    """The worker process's settings, read once from the environment."""
    try:
        return Settings.from_env()
    except SettingsError as exc:  # a configuration mistake is one line, not a traceback
        raise SystemExit(f"paglets-artifacts: configuration error: {exc}") from None


@functools.cache
def context() -> WorkerContext:
    """The process's context (built lazily, after a fork)."""
    return build_context(worker_settings())
