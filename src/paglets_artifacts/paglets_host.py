"""Offloading attached to a paglets ``Host`` (paglets 2.x): its streaming artifact work runs
as jobs in worker processes.

    from paglets.runtime.host import Host
    from paglets_artifacts.paglets_host import offload

    host = Host("alpha", port=8765, persistence_dir="/var/lib/paglets/alpha")
    offloading = offload(host)          # before or after host.start_background()
    host.serve_forever()

What changes for the host, all through its public attributes (``artifacts``, ``client``,
``add_listener``):

- ``host.artifacts`` is an :class:`OffloadedStore` (behind :class:`PagletsFacingStore`) over
  the host's own artifact directory, with the host's URL (kept in step: paglets calls
  ``set_host_url`` on every (re)bind), caps, quota and spool TTL, and the Redis index the
  workers share, so quota is exact across the host's uploads and the workers' imports.
  Uploads to the host's own ``POST /artifacts`` still arrive through paglets' HTTP server,
  now with our atomic, verified commit.
- The host's sweeps (at start, then paglets' cleanup thread every min(TTL, 300 s)) enqueue
  a sweep job instead of sweeping inline, never a second one while one is pending.
- A paglet's ``dispose`` event enqueues ``delete_owner(agent_id)`` (``delete_on_dispose``).
- Moving a registered file is a job the host thread waits on: ``create_from_path`` an
  import, ``export_to_path`` an export, ``host.client.upload_artifact`` an upload and
  ``host.client.download_artifact`` a download, and paglets' hash of the file before a
  dispatch a checksum job. A path outside the workers' allowed roots (or a remote host not
  on their allow-list) is done in the host process, as before, with a warning.

Errors reach paglets as paglets' own ``TransferError`` (so its HTTP server answers them as
it answers its own store's), and an unreachable Redis as its ``RemoteHostError``; a job that
cannot be enqueued for want of Redis is done in the host process. The one hook that is not a
public attribute of ``Host``: the hash before a dispatch is paglets' module function
``paglets.runtime.lifecycle.file_sha256``, replaced while any host is attached (a path under
no attached host's work directory is hashed by the function it replaced).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

try:
    import paglets.runtime.lifecycle as _lifecycle
    from paglets.artifacts import ArtifactRef as PagletsArtifactRef
    from paglets.core.errors import RemoteHostError as PagletsRemoteHostError
    from paglets.core.errors import TransferError as PagletsTransferError
    from paglets.remote.client import HostClient
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "paglets_artifacts.paglets_host needs paglets 2.x: pip install 'paglets-artifacts[paglets]'"
    ) from exc

from .errors import InvalidInput, JobTimeout, PathNotAllowed, QuotaExceeded, TransferError
from .http.remote import host_allowed
from .jobs import contract
from .jobs.client import ArtifactJobs, Job
from .jobs.records import QUEUED
from .logging_setup import configure_logging
from .refs import STREAM_CHUNK_BYTES, ArtifactRef, ArtifactWriteResult
from .settings import Settings, SettingsError
from .store.artifacts import ArtifactStore, Progress, request_body
from .store.paths import AllowedPath, resolve_allowed

logger = logging.getLogger("paglets_artifacts.paglets_host")

#: Longest a host thread waits for a worker to *start* one of its jobs before it gives up
#: (no worker running, or all busy): a dispatch then fails instead of hanging. The job
#: carries the same start deadline, so a worker that comes later skips it (its record then
#: fails with ``JobExpired``) instead of leaving an artifact or a file nobody wants.
DEFAULT_QUEUE_TIMEOUT_SECONDS = 60.0
#: Beyond the queue timeout, how long a job still marked queued is given to show it started
#: (a worker that took the message just in time records the start a moment later).
START_GRACE_SECONDS = 2.0
#: Most bytes of a refused upload's body read (and dropped) so paglets' client hears the error.
MAX_DRAIN_BYTES = 64 * 1024 * 1024


class Offloading:
    """The attachment of one paglets ``Host``; :func:`offload` makes one.

    Parameters:
      host: the paglets ``Host``.
      settings(Settings): the workers' settings (Redis, namespace, allowed roots and hosts),
        with the host's artifact directory, URL, caps, quota and TTL filled in.
      jobs(ArtifactJobs): where the host's jobs are enqueued.
      delete_on_dispose(bool): a paglet's ``dispose`` enqueues ``delete_owner``.
      timeout(float): longest a host thread waits for one of its jobs to end.
      queue_timeout(float): longest it waits for a worker to start it.
    """

    def __init__(
        self,
        host: Any,
        settings: Settings,
        jobs: ArtifactJobs,
        *,
        delete_on_dispose: bool,
        timeout: float,
        queue_timeout: float,
        owns_jobs: bool,
    ):
        self.host = host
        self.settings = settings
        self.jobs = jobs
        self.delete_on_dispose = delete_on_dispose
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self._owns_jobs = owns_jobs
        self._sweep_lock = threading.Lock()
        self._original_store = host.artifacts
        self._original_client = host.client
        store = OffloadedStore.from_settings(settings, redis=jobs.client)
        assert isinstance(store, OffloadedStore)  # from_settings builds its own class
        self.store = store
        self.store.offloading = self
        self.facade = PagletsFacingStore(self.store)
        self.client = OffloadingClient(self, self._original_client)
        self.attached = False

    # ------------------------------------------------------------ attach / detach

    def attach(self) -> Offloading:
        self.host.artifacts = self.facade
        self.host.client = self.client
        self.host.add_listener(self._on_event)
        _attach_hash(self)
        self.attached = True
        work_root = self.work_root
        if not self.path_allowed(work_root / "probe"):
            logger.warning(
                "host %s: its paglets' work directory %s is not under PAGLETS_ARTIFACTS_ALLOWED_ROOTS; "
                "registered files there are moved in the host process",
                self.host.name,
                work_root,
            )
        if getattr(self.host, "api_key", None) and any(
            not self.settings.host_key(url) for url in self.settings.allowed_hosts
        ):
            logger.warning(
                "host %s has an API key, but PAGLETS_ARTIFACTS_HOST_API_KEYS names none for some of "
                "PAGLETS_ARTIFACTS_ALLOWED_HOSTS: workers send no key to those hosts (the host's own client does)",
                self.host.name,
            )
        logger.info(
            "host %s: offloading attached (store %s, namespace %s)",
            self.host.name,
            self.store.root,
            self.settings.namespace,
        )
        return self

    def detach(self) -> None:
        """Give the host back its own store, client and in-process sweeps."""
        if not self.attached:
            return
        self.attached = False
        _detach_hash(self)
        self.host.remove_listener(self._on_event)
        self._original_store.set_host_url(self.store.host_url)
        self.host.artifacts = self._original_store
        self.host.client = self._original_client
        if self._owns_jobs:
            self.jobs.close()
        logger.info("host %s: offloading detached", self.host.name)

    def __enter__(self) -> Offloading:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------ facts

    @property
    def work_root(self) -> Path:
        """The parent of the host's paglet work directories (registered files arrive there):
        ``<persistence_dir>/work`` in paglets 2.x (``Host.work_dir_for`` needs a live paglet)."""
        return Path(self.host.persistence_dir) / "work"

    def worker_env(self) -> dict[str, str]:
        """The environment workers for this host start with (``paglets-artifacts worker``)."""
        return self.settings.with_changes(host_url=self.store.host_url).to_env()

    def path_allowed(self, path: str | Path) -> bool:
        """Whether the workers may touch ``path`` (the rule they apply: :func:`resolve_allowed`)."""
        try:
            resolve_allowed(path, self.settings.allowed_roots, what="path", forbidden=(self.store.root,))
        except (InvalidInput, PathNotAllowed):
            return False
        return True

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` lies in this host's paglet work directories (and the workers may read it)."""
        resolved = Path(path).resolve(strict=False)
        return resolved.is_relative_to(self.work_root.resolve(strict=False)) and self.path_allowed(path)

    def host_allowed(self, url: str) -> bool:
        return host_allowed(f"{url.rstrip('/')}/artifacts", self.settings.allowed_hosts)

    # ------------------------------------------------------------ jobs the host waits on

    def submit(self, kind: contract.JobKind, what: str, **arguments: Any) -> Job | None:
        """Enqueue a job the host will wait on, to be started within the queue timeout; ``None``
        when Redis cannot be reached (the caller then does the work in the host process)."""
        try:
            return self.jobs.enqueue(kind, start_within_seconds=self.queue_timeout, **arguments)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("host %s: %s runs in the host process: Redis is unavailable: %s", self.host.name, what, exc)
            return None

    def run(self, job: Job, what: str) -> Any:
        """Wait for ``job``; its result, or a ``TransferError`` naming ``what`` and the job."""
        logger.info("host %s: %s: job %s", self.host.name, what, job.id)
        started = time.monotonic()
        try:
            try:
                return job.wait(timeout=min(self.queue_timeout + START_GRACE_SECONDS, self.timeout))
            except JobTimeout:
                if job.status().state == QUEUED:  # past its start deadline: no worker will start it now
                    raise JobTimeout(f"no worker started it within {self.queue_timeout:g} s") from None
            return job.wait(timeout=max(0.0, self.timeout - (time.monotonic() - started)))
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:
            raise TransferError(f"{what} (job {job.id}) failed: {exc}") from exc

    def sweep(self) -> Job | None:
        """Enqueue a sweep unless one is still queued or running (this host's, another's or
        a scheduler's: the latest is recorded where the scheduler records its own); the
        job, or ``None``."""
        key = contract.periodic_state_key(self.settings.namespace, contract.SWEEP.name)
        with self._sweep_lock:
            try:
                last = self.jobs.client.hget(key, "job_id")
                record = self.jobs.records.get(last.decode() if isinstance(last, bytes) else last) if last else None
                # a record left queued or running far past the sweep's time limit lost its message
                lost = (
                    record is not None
                    and record.enqueued_at < time.time() - 2 * self.settings.maintenance_time_limit_seconds
                )
                if record is not None and not record.done and not lost:
                    logger.info("host %s: sweep skipped: job %s is %s", self.host.name, record.id, record.state)
                    return None
                job = self.jobs.sweep()
                self.jobs.client.hset(key, "job_id", job.id)
            except Exception as exc:  # the host's cleanup thread must live on: next tick
                logger.warning("host %s: sweep not enqueued: %s", self.host.name, exc)
                return None
        logger.info("host %s: sweep: job %s", self.host.name, job.id)
        return job

    def _on_event(self, event: Any) -> None:
        if event.kind != "dispose" or not self.delete_on_dispose or not event.agent_id:
            return
        try:
            job = self.jobs.delete_owner(event.agent_id)
        except Exception as exc:
            logger.error("host %s: delete_owner(%s) not enqueued: %s", self.host.name, event.agent_id, exc)
            return
        logger.info("host %s: paglet %s disposed: delete_owner job %s", self.host.name, event.agent_id, job.id)


class OffloadedStore(ArtifactStore):
    """A paglets host's store whose registered-file work runs as jobs (see the module)."""

    offloading: Offloading

    def create_from_path(
        self,
        source: str | Path | AllowedPath,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        artifact_id: str | None = None,
        delete_source: bool = False,
        progress: Progress | None = None,
    ) -> ArtifactWriteResult:
        # our own extensions (a chosen id, a progress callback) and paths the workers may not
        # read are done here, as paglets' store would
        what = f"import of {source}"
        job = None
        if (
            artifact_id is None
            and progress is None
            and not isinstance(source, AllowedPath)
            and self.offloading.path_allowed(source)
        ):
            job = self.offloading.submit(
                contract.IMPORT,
                what,
                path=str(source),
                owner_agent_id=owner_agent_id,
                name=name or Path(source).name,
                compression=compression,
                expires_at=expires_at,
                expected_sha256=expected_sha256,
                delete_source=delete_source,
            )
        else:
            _warn_in_process(self.offloading, what)
        if job is None:
            return super().create_from_path(
                source,
                owner_agent_id=owner_agent_id,
                name=name,
                compression=compression,
                expires_at=expires_at,
                expected_sha256=expected_sha256,
                artifact_id=artifact_id,
                delete_source=delete_source,
                progress=progress,
            )
        wire = self.offloading.run(job, what)
        ref = self._with_host(ArtifactRef.from_wire(wire))
        return ArtifactWriteResult(ref=ref, path=self.layout.blob(ref.artifact_id))

    def export_to_path(
        self,
        artifact_id: str,
        target: str | Path | AllowedPath,
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
        part_token: str | None = None,
    ) -> ArtifactRef:
        what = f"export of {artifact_id} to {target}"
        job = None
        if (
            progress is None
            and part_token is None
            and not isinstance(target, AllowedPath)
            and self.offloading.path_allowed(target)
        ):
            job = self.offloading.submit(
                contract.EXPORT, what, artifact_id=artifact_id, target=str(target), expected_sha256=expected_sha256
            )
        else:
            _warn_in_process(self.offloading, what)
        if job is None:
            return super().export_to_path(
                artifact_id, target, expected_sha256=expected_sha256, progress=progress, part_token=part_token
            )
        return self._with_host(ArtifactRef.from_wire(self.offloading.run(job, what)))

    def create_from_http_request(
        self,
        headers: Any,
        source: Any,
        *,
        owner_agent_id: str = "",
        name: str = "",
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
    ) -> ArtifactWriteResult:
        """An upload to the host's own ``POST /artifacts``, stored here (the bytes are on the
        host's socket). paglets' client sends the whole body before it reads the answer, and
        paglets' own store refuses for quota only after the body: a body of at most
        :data:`MAX_DRAIN_BYTES` refused for quota before its end is read to its end, so the
        client hears the error instead of a broken pipe."""
        stream, size = request_body(headers, source)
        try:
            return self.create_from_stream(
                stream,
                size_bytes=size,
                owner_agent_id=owner_agent_id,
                name=name,
                compression=compression,
                expires_at=expires_at,
                expected_sha256=expected_sha256,
            )
        except QuotaExceeded:
            if 0 <= size <= MAX_DRAIN_BYTES:
                _drain(stream, size)
            raise

    def cleanup_temporary(self, *, now: float | None = None, stop: Callable[[], bool] | None = None) -> Any:
        """Enqueue a sweep job (the host's periodic call); ``now`` given: sweep here, now."""
        if now is not None:
            return super().cleanup_temporary(now=now) if stop is None else super().cleanup_temporary(now=now, stop=stop)
        return self.offloading.sweep()


class PagletsFacingStore:
    """What ``host.artifacts`` is: an :class:`OffloadedStore` whose errors leave as paglets'
    ``TransferError`` (the store's own methods keep catching its own classes).

    Parameters:
      store(OffloadedStore): the store every call goes to.
    """

    def __init__(self, store: OffloadedStore):
        self.store = store

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.store, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return _as_paglets(lambda: value(*args, **kwargs))

        return call


class OffloadingClient(HostClient):
    """paglets' ``HostClient`` whose artifact uploads and downloads run as jobs.

    paglets' ``timeout`` of a call is a socket timeout: a job is waited on up to the
    transfer time limit instead. Workers send the per-host keys of their settings
    (``PAGLETS_ARTIFACTS_HOST_API_KEYS``), not the host's own key.

    Parameters:
      offloading(Offloading): the attachment whose jobs it enqueues.
      base(HostClient): the host's own client (its timeout and API key are kept).
    """

    def __init__(self, offloading: Offloading, base: HostClient):
        super().__init__(timeout=base.timeout, api_key=base.api_key)
        self.offloading = offloading
        self.base = base

    # Everything but the two byte-moving calls is the host's own client's.
    def get_json(self, *args: Any, **kwargs: Any) -> Any:
        return self.base.get_json(*args, **kwargs)

    def post_json(self, *args: Any, **kwargs: Any) -> Any:
        return self.base.post_json(*args, **kwargs)

    def post_pickle(self, *args: Any, **kwargs: Any) -> Any:
        return self.base.post_pickle(*args, **kwargs)

    def artifact_metadata(self, *args: Any, **kwargs: Any) -> PagletsArtifactRef:
        return self.base.artifact_metadata(*args, **kwargs)

    def list_artifacts(self, *args: Any, **kwargs: Any) -> list[PagletsArtifactRef]:
        return self.base.list_artifacts(*args, **kwargs)

    def delete_artifact(self, *args: Any, **kwargs: Any) -> None:
        self.base.delete_artifact(*args, **kwargs)

    def upload_artifact(
        self,
        host_url: str,
        path: str | Path,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        timeout: float | None = None,
    ) -> PagletsArtifactRef:
        off = self.offloading
        what = f"upload of {path} to {host_url}"
        job = None
        if off.path_allowed(path) and off.host_allowed(host_url):
            job = _as_paglets(
                lambda: off.submit(
                    contract.UPLOAD,
                    what,
                    path=str(path),
                    host_url=host_url,
                    owner_agent_id=owner_agent_id,
                    name=name or Path(path).name,
                    compression=compression,
                    expires_at=expires_at,
                    expected_sha256=expected_sha256,
                )
            )
        else:
            _warn_in_process(off, what)
        if job is None:
            return self.base.upload_artifact(
                host_url,
                path,
                owner_agent_id=owner_agent_id,
                name=name,
                compression=compression,
                expires_at=expires_at,
                expected_sha256=expected_sha256,
                timeout=timeout,
            )
        return PagletsArtifactRef.from_wire(_as_paglets(lambda: off.run(job, what)))

    def download_artifact(
        self,
        artifact: PagletsArtifactRef | str,
        target: str | Path,
        artifact_id: str | None = None,
        *,
        move: bool = False,
        timeout: float | None = None,
    ) -> PagletsArtifactRef:
        off = self.offloading
        ref = artifact if isinstance(artifact, PagletsArtifactRef) else None
        if ref is None:
            if artifact_id is None:
                return self.base.download_artifact(artifact, target, artifact_id, move=move, timeout=timeout)
            ref = self.artifact_metadata(str(artifact), artifact_id, timeout=timeout)
        what = f"download of {ref.artifact_id} from {ref.host_url} to {target}"
        job = None
        if off.path_allowed(target) and off.host_allowed(ref.host_url):
            job = _as_paglets(
                lambda: off.submit(
                    contract.DOWNLOAD,
                    what,
                    url=f"{ref.host_url.rstrip('/')}/artifacts/{ref.artifact_id}",
                    target=str(target),
                    expected_sha256=ref.sha256 or None,
                    expected_size=ref.size_bytes,
                    move=move,
                )
            )
        else:
            _warn_in_process(off, what)
        if job is None:
            return self.base.download_artifact(ref, target, move=move, timeout=timeout)
        _as_paglets(lambda: off.run(job, what))
        return ref


def offload(
    host: Any,
    settings: Settings | None = None,
    *,
    jobs: ArtifactJobs | None = None,
    delete_on_dispose: bool = True,
    timeout: float | None = None,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_SECONDS,
) -> Offloading:
    """Attach offloading to a paglets ``Host``; :meth:`Offloading.detach` undoes it.

    ``settings`` (default: from the environment) are the workers' settings. Their store root
    must be the host's artifact directory (the workers write there; a :class:`SettingsError`
    names both otherwise); URL, caps, quota and TTL are taken from the host, and a worker
    setting that differs is logged. ``timeout`` defaults to the transfer time limit.
    """
    if isinstance(host.artifacts, PagletsFacingStore):
        raise RuntimeError(f"host {host.name!r} already has offloading attached: detach it first")
    settings = settings or Settings.from_env()
    own = host.artifacts
    root = Path(own.root).resolve(strict=False)
    if Path(settings.store_root).expanduser().resolve(strict=False) != root:
        raise SettingsError(
            f"PAGLETS_ARTIFACTS_STORE_ROOT is {settings.store_root}, but host {host.name!r} keeps its artifacts in "
            f"{root}: workers must use the host's directory (set PAGLETS_ARTIFACTS_STORE_ROOT={root})"
        )
    from_host = {
        "max_artifact_bytes": int(own.max_artifact_bytes),
        "quota_bytes": own.quota_bytes,
        "spool_ttl_seconds": float(own.spool_ttl_seconds),
    }
    for name, value in from_host.items():
        if getattr(settings, name) != value:
            logger.warning(
                "host %s: %s is %r for the host but %r in the settings workers read",
                host.name,
                name,
                value,
                getattr(settings, name),
            )
    settings = settings.with_changes(store_root=root, host_url=own.host_url, **from_host)
    owns_jobs = jobs is None
    jobs = jobs if jobs is not None else ArtifactJobs(settings=settings)
    offloading = Offloading(
        host,
        settings,
        jobs,
        delete_on_dispose=delete_on_dispose,
        timeout=settings.transfer_time_limit_seconds if timeout is None else timeout,
        queue_timeout=queue_timeout,
        owns_jobs=owns_jobs,
    )
    return offloading.attach()


def run_host(
    settings: Settings,
    *,
    name: str,
    bind: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    persistence_dir: Path | None = None,
    mesh: bool = True,
    peers: list[str] | None = None,
    public_url: str | None = None,
    delete_on_dispose: bool = True,
    adopt_store_root: bool = True,
    on_started: Any = None,
) -> None:
    """Run a real paglets ``Host`` with offloading attached until SIGINT or SIGTERM
    (``paglets-artifacts paglets-host``). ``persistence_dir`` defaults to paglets' own
    default for ``name``; with ``adopt_store_root`` the host's artifact directory becomes the
    store root (else ``settings.store_root`` must be it); caps, quota and TTL are the settings'."""
    import signal

    from paglets.runtime.host import Host

    from .http.server import is_loopback

    configure_logging(settings, keep_existing=True)  # a host operator reads which job moved which file
    if not api_key and not is_loopback(bind):
        # paglets' API creates paglets, that is, runs code: beyond loopback only with a key
        if not settings.allow_insecure:
            raise SettingsError(
                f"refusing to run paglets host {name!r} on {bind} without an API key: anyone who reaches it could "
                f"create paglets; set PAGLETS_API_KEY (or the variable --api-key-env names), or listen on "
                f"127.0.0.1, or pass --insecure (PAGLETS_ARTIFACTS_ALLOW_INSECURE=1) to run without one"
            )
        logger.warning(
            "paglets host %s on %s without an API key (PAGLETS_ARTIFACTS_ALLOW_INSECURE): anyone who "
            "reaches this address can create paglets",
            name,
            bind,
        )

    host = Host(
        name,
        bind,
        port,
        api_key=api_key,
        persistence_dir=persistence_dir,
        mesh=mesh,
        peers=peers,
        public_url=public_url,
        artifact_max_bytes=settings.max_artifact_bytes,
        artifact_storage_quota_bytes=settings.quota_bytes,
        artifact_spool_ttl_seconds=settings.spool_ttl_seconds,
    )
    if adopt_store_root:
        settings = settings.with_changes(store_root=Path(host.artifacts.root))
    offloading = offload(host, settings, delete_on_dispose=delete_on_dispose)
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            logger.info("host %s: %s: stopping", name, signal.Signals(signum).name)
            threading.Thread(target=host.shutdown, name="paglets-host-shutdown", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host.start_background()
        if on_started is not None:
            on_started(host, offloading)
        host.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        offloading.detach()


# ---------------------------------------------------------------------- helpers of this module


def _as_paglets(call: Any) -> Any:
    """Run ``call``; our store errors leave as paglets' ``TransferError`` and an unreachable
    Redis as its ``RemoteHostError`` (causes kept)."""
    try:
        return call()
    except TransferError as exc:
        raise PagletsTransferError(str(exc)) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise PagletsRemoteHostError(f"Redis is unavailable: {type(exc).__name__}: {exc}") from exc


def _drain(stream: Any, size: int) -> None:
    """Read and drop what is left of a request body of ``size`` bytes."""
    left = size
    with contextlib.suppress(Exception):  # a broken body: the error already raised is the one to tell
        while left > 0:
            chunk = stream.read(min(STREAM_CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)


def _warn_in_process(off: Offloading, what: str) -> None:
    logger.warning(
        "host %s: %s runs in the host process (outside the workers' allowed roots or hosts)", off.host.name, what
    )


# The hash before a dispatch is paglets.runtime.lifecycle's module function file_sha256: while
# a host is attached it is replaced by one that runs a checksum job of the attached host whose
# work directories hold the path (the function it replaced hashes any other path).
_ATTACHED: list[Offloading] = []
_ATTACHED_LOCK = threading.Lock()
_replaced_file_sha256: Any = None


def _offloaded_file_sha256(path: str | Path) -> str:
    for off in list(_ATTACHED):
        if off.holds(path):
            what = f"checksum of {path}"
            job = _as_paglets(lambda off=off, what=what: off.submit(contract.CHECKSUM, what, path=str(path)))
            if job is not None:
                return str(_as_paglets(lambda off=off, job=job, what=what: off.run(job, what))["sha256"])
            break
    return _replaced_file_sha256(path)


def _attach_hash(off: Offloading) -> None:
    global _replaced_file_sha256
    with _ATTACHED_LOCK:
        if not _ATTACHED:
            _replaced_file_sha256 = _lifecycle.file_sha256
            _lifecycle.file_sha256 = _offloaded_file_sha256
        _ATTACHED.append(off)


def _detach_hash(off: Offloading) -> None:
    with _ATTACHED_LOCK:
        if off in _ATTACHED:
            _ATTACHED.remove(off)
        if not _ATTACHED and _lifecycle.file_sha256 is _offloaded_file_sha256:
            _lifecycle.file_sha256 = _replaced_file_sha256
