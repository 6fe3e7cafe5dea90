"""Prometheus metrics of the artifact jobs, aggregated over every worker process.

``dramatiq workers`` forks several worker processes, so the counters use
prometheus_client's *multiprocess mode*: each process writes its values to memory-mapped
files in one directory, and a single exposition server (a Dramatiq fork process declared
by :attr:`Metrics.forks`) adds them up when Prometheus scrapes
``http://<worker>:<PAGLETS_ARTIFACTS_METRICS_PORT>/metrics``.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set, otherwise one per ``dramatiq``
main process under the temp dir. ``paglets-artifacts worker`` starts every run with a
fresh, empty one, as multiprocess mode requires. With ``PAGLETS_ARTIFACTS_METRICS_PORT``
at 0 (the default) the middleware does nothing.

Store figures (bytes used, the quota) are read from the store's index when Prometheus
scrapes, in the exposition process, not on the job path.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dramatiq import Middleware

from paglets_artifacts.errors import JobCanceled
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.contract import KINDS_BY_ACTOR
from paglets_artifacts.jobs.records import CANCELED, FAILED, SUCCEEDED
from paglets_artifacts.jobs.worker_process import METRICS_DIR_PREFIX
from paglets_artifacts.settings import Settings

from .middleware import current_job

logger = logging.getLogger("paglets_artifacts.metrics")

#: Histogram buckets of job durations, in seconds: sweeps take milliseconds, transfers hours.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
#: Kinds whose result counts as bytes entering the store.
IMPORT_KINDS = contract.INTO_STORE_KINDS
#: Kinds whose result counts as bytes leaving the store.
EXPORT_KINDS = contract.OUT_OF_STORE_KINDS
#: Exit code of the exposition process when it cannot serve (port in use...).
EXIT_CANNOT_SERVE = 3


def multiprocess_dir() -> Path:
    """Where this process's metric files go: ``PROMETHEUS_MULTIPROC_DIR``, else one
    directory per ``dramatiq`` main process (the parent of workers and forks alike)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"{METRICS_DIR_PREFIX}{os.getppid()}"  # the name the worker command uses


def _use_multiprocess_values(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from prometheus_client import values

    # prometheus_client picks its value class when first imported; if that happened
    # before the directory was known, switch to the memory-mapped one now.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


class JobMetrics:
    """The metric objects a worker process updates (unregistered: multiprocess mode
    collects them from their files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.jobs = Counter(
            "paglets_artifacts_jobs",
            "Jobs that ended, by kind and outcome (succeeded, failed, canceled, skipped).",
            ["kind", "outcome"],
            registry=None,
        )
        self.durations = Histogram(
            "paglets_artifacts_job_duration_seconds",
            "Time one attempt of a job took, by kind and outcome.",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.in_flight = Gauge(
            "paglets_artifacts_jobs_in_flight",
            "Jobs running now, by kind.",
            ["kind"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.retries = Counter(
            "paglets_artifacts_job_retries",
            "Attempts that failed with a transient error and will be retried.",
            ["kind", "error"],
            registry=None,
        )
        self.bytes_imported = Counter(
            "paglets_artifacts_imported_bytes", "Bytes of artifacts imported into the store.", ["kind"], registry=None
        )
        self.bytes_exported = Counter(
            "paglets_artifacts_exported_bytes", "Bytes of artifacts exported from the store.", ["kind"], registry=None
        )
        self.sweep_removed = Counter(
            "paglets_artifacts_sweep_removed",
            "What sweeps removed: stale .part files, expired artifacts, orphans.",
            ["what"],
            registry=None,
        )
        self.sweep_bytes_freed = Counter("paglets_artifacts_sweep_freed_bytes", "Bytes sweeps freed.", registry=None)
        self.sweep_unreadable = Gauge(
            "paglets_artifacts_sweep_unreadable_metadata",
            "Unreadable metadata files the last sweep found.",
            multiprocess_mode="mostrecent",
            registry=None,
        )
        self.owner_deletions = Counter("paglets_artifacts_owner_deletions", "Owner deletions that ran.", registry=None)
        self.owner_deleted_artifacts = Counter(
            "paglets_artifacts_owner_deleted_artifacts", "Artifacts removed by owner deletions.", registry=None
        )
        self.owner_deleted_bytes = Counter(
            "paglets_artifacts_owner_deleted_bytes", "Bytes freed by owner deletions.", registry=None
        )

    def record_result(self, kind: str, result: Any) -> None:
        """Count what a successful job did, from its result."""
        if not isinstance(result, dict):
            return
        size = result.get("size_bytes")
        if isinstance(size, int) and kind in IMPORT_KINDS:
            self.bytes_imported.labels(kind).inc(size)
        elif isinstance(size, int) and kind in EXPORT_KINDS:
            self.bytes_exported.labels(kind).inc(size)
        elif kind == contract.SWEEP.name:
            for what, key in (
                ("parts", "parts_removed"),
                ("expired", "expired_removed"),
                ("orphans", "orphans_removed"),
            ):
                self.sweep_removed.labels(what).inc(int(result.get(key, 0)))
            self.sweep_bytes_freed.inc(int(result.get("bytes_freed", 0)))
            self.sweep_unreadable.set(int(result.get("unreadable_metadata", 0)))
        elif kind == contract.DELETE_OWNER.name:
            self.owner_deletions.inc()
            self.owner_deleted_artifacts.inc(int(result.get("deleted", 0)))
            self.owner_deleted_bytes.inc(int(result.get("bytes_freed", 0)))


class Metrics(Middleware):
    """Counts jobs, their durations, retries and effects; serves them when a port is set.

    It must sit *after* ``JobRecordsMiddleware`` (so the job and its result are still
    known when its after-hook runs) and *before* ``Retries`` (so ``message.failed`` tells
    a retry from a final failure).

    Parameters:
      settings(Settings): ``metrics_port`` (0: off).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics: JobMetrics | None = None
        self._started: dict[str, tuple[str, float]] = {}

    @property
    def forks(self) -> list[Any]:
        return [serve_metrics] if self.settings.metrics_port > 0 else []

    def after_process_boot(self, broker: Any) -> None:
        if self.settings.metrics_port <= 0:
            return
        _use_multiprocess_values(multiprocess_dir())
        self.metrics = JobMetrics()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self.metrics is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), str(multiprocess_dir()))

    def before_process_message(self, broker: Any, message: Any) -> None:
        kind = KINDS_BY_ACTOR.get(message.actor_name)
        if self.metrics is None or kind is None:
            return
        self._started[message.message_id] = (kind.name, time.monotonic())
        self.metrics.in_flight.labels(kind.name).inc()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        started = self._started.pop(message.message_id, None)
        if self.metrics is None or started is None:
            return
        kind, since = started
        self.metrics.in_flight.labels(kind).dec()
        if exception is not None and not message.failed:
            outcome = "retried"
            self.metrics.retries.labels(kind, type(exception).__name__).inc()
        elif isinstance(exception, JobCanceled) or _stopped_by_cancel():
            outcome = CANCELED  # the attempt stopped for a cancel (a maintenance job: what it did is its result)
            self.metrics.jobs.labels(kind, outcome).inc()
        else:
            outcome = FAILED if exception is not None else SUCCEEDED
            self.metrics.jobs.labels(kind, outcome).inc()
        self.metrics.durations.labels(kind, outcome).observe(time.monotonic() - since)
        if outcome == SUCCEEDED:
            try:
                job_result = current_job().result
            except RuntimeError:
                return
            self.metrics.record_result(kind, job_result)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        kind = KINDS_BY_ACTOR.get(message.actor_name)
        started = self._started.pop(message.message_id, None)
        if self.metrics is None or kind is None:
            return
        if started is not None:
            self.metrics.in_flight.labels(kind.name).dec()
        self.metrics.jobs.labels(kind.name, "skipped").inc()


def _stopped_by_cancel() -> bool:
    """Whether the job this thread ran saw its cancel (a maintenance job stops and returns)."""
    try:
        return current_job().cancel.canceled
    except RuntimeError:
        return False


class StoreCollector:
    """Store figures read from the index at scrape time: bytes used, the quota.

    Parameters:
      settings(Settings): where the store and Redis are.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._store: Any = None

    def _open_store(self) -> Any:
        if self._store is None:
            from paglets_artifacts.redis_client import connect_redis
            from paglets_artifacts.store.artifacts import ArtifactStore

            client = connect_redis(self.settings)
            self._store = ArtifactStore.from_settings(self.settings, redis=client)
        return self._store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        readable = GaugeMetricFamily(
            "paglets_artifacts_store_readable", "1 when the last scrape could read the store's usage, else 0."
        )
        try:
            used = int(self._open_store().index.used_bytes())
        except Exception as exc:  # a scrape must answer even when the store cannot
            logger.warning("cannot read store usage: %s: %s", type(exc).__name__, exc)
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield GaugeMetricFamily(
            "paglets_artifacts_store_used_bytes", "Bytes held by committed artifacts and live reservations.", value=used
        )
        if self.settings.quota_bytes is not None:
            yield GaugeMetricFamily(
                "paglets_artifacts_store_quota_bytes", "The store's quota in bytes.", value=self.settings.quota_bytes
            )


def exposition_registry(settings: Settings, path: Path) -> Any:
    """A registry that adds up every process's files in ``path`` and reads the store."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    registry.register(StoreCollector(settings))
    return registry


def serve_metrics() -> int:
    """The exposition server (a ``dramatiq`` fork process): serve until stopped."""
    from prometheus_client import start_http_server

    from .context import worker_settings

    settings = worker_settings()
    path = multiprocess_dir()
    path.mkdir(parents=True, exist_ok=True)
    try:
        _server, thread = start_http_server(settings.metrics_port, registry=exposition_registry(settings, path))
    except OSError as exc:
        reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be opened: {exc}"
        logger.error("metrics port %d %s; metrics are not served", settings.metrics_port, reason)
        return EXIT_CANNOT_SERVE
    logger.info("serving metrics on port %d from %s", settings.metrics_port, path)
    thread.join()
    return 0
