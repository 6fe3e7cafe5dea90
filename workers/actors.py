"""The actors: each runs one kind of job of the contract against the shared store.

Importing this module registers nothing: each job function is a :class:`JobActor`, which
:mod:`workers.registry` registers on the worker's broker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq

from paglets_artifacts.errors import (
    ArtifactNotFound,
    InvalidInput,
    OwnerDeleted,
    SourceUnavailable,
    Superseded,
    TransferError,
)
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.client import ArtifactJobs
from paglets_artifacts.settings import Settings
from paglets_artifacts.store.artifacts import OwnerDeletion
from paglets_artifacts.store.paths import AllowedPath, resolve_beneath
from paglets_artifacts.store.streams import hashed_read

from .context import context
from .middleware import current_job
from .reconcile import reconcile_jobs

logger = logging.getLogger("paglets_artifacts.jobs")


def transfer_time_limit(settings: Settings) -> float:
    return settings.transfer_time_limit_seconds


def maintenance_time_limit(settings: Settings) -> float:
    return settings.maintenance_time_limit_seconds


@dataclass(frozen=True)
class JobActor:
    """One kind of job and the function that runs it, not yet registered on a broker.

    Parameters:
      kind(contract.JobKind): the job kind (actor name, queue, argument schema).
      fn(Callable[..., Any]): runs the job from its checked keyword arguments; what it
        returns becomes the job's result.
      time_limit(Callable[[Settings], float]): the kind's time limit in seconds, from the settings.
    """

    kind: contract.JobKind
    fn: Callable[..., Any]
    time_limit: Callable[[Settings], float]

    def register(self, broker: dramatiq.Broker, settings: Settings) -> dramatiq.Actor:
        """Declare this job's actor on ``broker``."""
        kind, fn = self.kind, self.fn

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            if args:
                raise InvalidInput(f"{kind.name} job takes keyword arguments only, got {len(args)} positional")
            job = current_job()
            job.result = fn(**kind.validate(kwargs))

        return dramatiq.actor(  # type: ignore[call-overload]  # dramatiq's overloads want a typed function
            run,
            actor_name=kind.actor_name,
            queue_name=kind.queue_name,
            time_limit=int(self.time_limit(settings) * 1000),
            throws=(TransferError,),
            broker=broker,
        )


def job_actor(
    kind: contract.JobKind, *, time_limit: Callable[[Settings], float]
) -> Callable[[Callable[..., Any]], JobActor]:
    """Make ``fn`` the job function of ``kind``: arguments are checked against the contract,
    and what ``fn`` returns becomes the job's result (registered by :mod:`workers.registry`)."""

    def wrap(fn: Callable[..., Any]) -> JobActor:
        return JobActor(kind, fn, time_limit)

    return wrap


def artifact_id_for_job() -> str:
    # One job, one artifact: a redelivered import finds the artifact its first attempt made.
    job_id = current_job().id
    try:
        return uuid.UUID(job_id).hex
    except (ValueError, TypeError):
        raise InvalidInput(f"job id {job_id!r} is not a UUID (enqueue jobs with ArtifactJobs)") from None


def check_owner_alive(owner_agent_id: str, *, at_start: bool = False) -> None:
    """Fail an import enqueued before its owner was deleted (see README: owner deletion).

    ``at_start``: by the tombstone read with the job's start (its first check, before it
    touches its source), rather than by reading it now."""
    if not owner_agent_id:
        return
    job = current_job()
    deleted_at: bytes | str | None
    if at_start:
        deleted_at = job.owner_tombstone
    else:
        ctx = context()
        deleted_at = ctx.client.get(ctx.tombstone_key(owner_agent_id))
    if deleted_at is not None and float(deleted_at) >= job.enqueued_at:
        raise OwnerDeleted(f"owner {owner_agent_id!r} was deleted after this import was enqueued")


def keep_unless_owner_deleted(artifact_id: str, owner_agent_id: str) -> None:
    """After a commit: if the owner was deleted meanwhile, remove the artifact and fail."""
    try:
        check_owner_alive(owner_agent_id)
    except OwnerDeleted:
        context().store.remove(artifact_id)
        raise


@contextlib.contextmanager
def reclaimed_on_failure(artifact_id: str) -> Iterator[None]:
    """Run an import attempt (file or pull) that writes ``artifact_id``; if it fails, for
    whatever reason, first remove what earlier attempts of its job left under that id.

    A redelivered attempt runs because an earlier one was killed: its ``.part``, staged
    metadata, half-committed blob and quota reservation are still there, and an error the
    new attempt meets early (the owner deleted, the source gone) would otherwise leave them
    until the spool TTL or a reindex. When the owner was deleted, an artifact an earlier
    attempt committed goes too: the deletion may have missed it (killed between the
    commit's renames and the index update, or before the post-commit check).
    ``Superseded`` is left alone: another attempt of the job is writing those files now.
    """
    try:
        yield
    except Superseded:
        raise
    except BaseException as exc:
        try:
            freed = context().store.reclaim(artifact_id, remove_committed=isinstance(exc, OwnerDeleted))
        except Exception as cleanup_error:  # e.g. Redis down: the error that ended the attempt is what counts
            logger.warning("could not reclaim what earlier attempts left for %s: %s", artifact_id, cleanup_error)
        else:
            if freed:
                logger.info("reclaimed %d bytes earlier attempts left for %s", freed, artifact_id)
        raise


@job_actor(contract.IMPORT, time_limit=transfer_time_limit)
def import_file(
    *,
    path: str,
    owner_agent_id: str,
    name: str | None,
    compression: str,
    expires_at: float,
    expected_sha256: str | None,
    delete_source: bool,
) -> dict[str, Any]:
    artifact_id = artifact_id_for_job()
    with reclaimed_on_failure(artifact_id):
        return _import_file(
            artifact_id,
            path=path,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            delete_source=delete_source,
        )


def _import_file(
    artifact_id: str,
    *,
    path: str,
    owner_agent_id: str,
    name: str | None,
    compression: str,
    expires_at: float,
    expected_sha256: str | None,
    delete_source: bool,
) -> dict[str, Any]:
    ctx = context()
    # Opened beneath its allowed root later, no link followed: a directory of the path
    # swapped for a symlink after this check is refused, not followed out of the root.
    source = resolve_beneath(path, context().settings.allowed_roots, what="import source", forbidden=[ctx.store.root])
    check_owner_alive(owner_agent_id, at_start=True)
    # Idempotent by the job's artifact id: one committed by an attempt that died (or lost
    # Redis) before it finished is returned, added to the index, and a moved source removed.
    result = ctx.store.create_from_path(
        source,
        owner_agent_id=owner_agent_id,
        name=name or Path(path).name,
        compression=compression,
        expires_at=expires_at,
        expected_sha256=expected_sha256,
        artifact_id=artifact_id,
        delete_source=delete_source,
        progress=current_job().progress,
    )
    keep_unless_owner_deleted(artifact_id, owner_agent_id)
    return result.ref.to_wire()


@job_actor(contract.EXPORT, time_limit=transfer_time_limit)
def export(*, artifact_id: str, target: str, expected_sha256: str | None, move: bool) -> dict[str, Any]:
    ctx = context()
    target_path = resolve_beneath(
        target, context().settings.allowed_roots, what="export target", forbidden=[ctx.store.root]
    )
    try:
        ref = ctx.store.export_to_path(
            artifact_id,
            target_path,
            expected_sha256=expected_sha256,
            progress=current_job().progress,
            part_token=artifact_id_for_job(),  # a retry replaces a killed attempt's .part
        )
    except ArtifactNotFound:
        # A redelivered move whose first attempt finished: the artifact is gone but the
        # target holds its verified bytes. The checkpoint says which bytes those were.
        ref_wire = ctx.records.checkpoint(current_job().id)
        if not (move and ref_wire):
            raise
        if _target_sha256(target_path) != ref_wire["sha256"]:
            raise
        ctx.store.finish_removal(artifact_id)  # the first attempt may have died mid-deletion
        return {**ref_wire, "target": str(target_path), "moved": True}
    if move:
        ctx.records.save_checkpoint(current_job().id, ref.to_wire())
        ctx.store.delete(artifact_id)
    return {**ref.to_wire(), "target": str(target_path), "moved": move}


def _target_sha256(target: AllowedPath) -> str | None:
    """The SHA-256 of an export target that is a regular file, else ``None``."""
    try:
        fd = target.open_file()
    except FileNotFoundError:
        return None
    with open(fd, "rb", buffering=0, closefd=True) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return hashed_read(handle)[1]


@job_actor(contract.SWEEP, time_limit=maintenance_time_limit)
def sweep(*, now: float | None) -> dict[str, Any]:
    cancel = current_job().cancel
    report = context().store.cleanup_temporary(now=now, stop=cancel.requested)
    return stopped_early(report.to_wire(), cancel.canceled)


def stopped_early(result: dict[str, Any], canceled: bool) -> dict[str, Any]:
    """A maintenance job's result, saying ``stopped`` when a cancel ended it before its end."""
    return {**result, "stopped": True} if canceled else result


# KEYS: tombstone | ARGV: deleted_at ttl_seconds. Sets the tombstone unless it already holds
# a time as late (another deletion of the same owner, running later).
_RAISE_TOMBSTONE = """
local old = redis.call('GET', KEYS[1])
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@functools.cache
def _raise_tombstone(client: Any) -> Any:
    """The tombstone script, registered once per process (sent by its SHA, not its text)."""
    return client.register_script(_RAISE_TOMBSTONE)


@job_actor(contract.DELETE_OWNER, time_limit=maintenance_time_limit)
def delete_owner(*, owner_agent_id: str) -> dict[str, Any]:
    ctx = context()
    key = ctx.tombstone_key(owner_agent_id)
    ttl = int(context().settings.owner_tombstone_seconds)
    # The tombstone first: an import of this owner enqueued before now is refused when it
    # starts, and removes its artifact itself when it commits from now on.
    cancel = current_job().cancel
    raise_tombstone = _raise_tombstone(ctx.client)
    raise_tombstone(keys=[key], args=[repr(time.time()), ttl])
    first = ctx.store.delete_owner(owner_agent_id, stop=cancel.requested)
    # Then the deletion's end: every import enqueued before it is refused (the tombstone's
    # time is what imports compare their enqueue time with), and a second pass removes what
    # imports committed during the first one, before their post-commit check could see it.
    second = OwnerDeletion()
    if not cancel.canceled:
        raise_tombstone(keys=[key], args=[repr(time.time()), ttl])
        second = ctx.store.delete_owner(owner_agent_id, stop=cancel.requested)
    result = {
        "owner_agent_id": owner_agent_id,
        "deleted": len(first.deleted) + len(second.deleted),
        "bytes_freed": first.bytes_freed + second.bytes_freed,
    }
    return stopped_early(result, cancel.canceled)


@job_actor(contract.REINDEX, time_limit=maintenance_time_limit)
def reindex() -> dict[str, Any]:
    cancel = current_job().cancel
    return stopped_early(context().store.reindex(stop=cancel.requested), cancel.canceled)


@job_actor(contract.RECONCILE, time_limit=maintenance_time_limit)
def reconcile() -> dict[str, Any]:
    ctx = context()
    jobs = ArtifactJobs(client=ctx.client, settings=ctx.settings)
    return reconcile_jobs(jobs, grace_seconds=ctx.settings.reconcile_grace_seconds).to_wire()


@job_actor(contract.CHECKSUM, time_limit=transfer_time_limit)
def checksum(*, path: str) -> dict[str, Any]:
    source = resolve_beneath(
        path, context().settings.allowed_roots, what="checksum source", forbidden=[context().store.root]
    )
    with open_regular(source) as handle:
        size = os.fstat(handle.fileno()).st_size
        _, sha256 = hashed_read(handle, on_chunk=lambda done: current_job().progress(done, size))
    return {"path": str(source), "sha256": sha256, "size_bytes": size}


def open_regular(path: AllowedPath, what: str = "source"):
    """The regular file ``path`` opened beneath its allowed root (no link followed) as a
    binary file object; ``SourceUnavailable`` naming it when it is missing or no file."""
    try:
        fd = path.open_file()
    except FileNotFoundError:
        raise SourceUnavailable(f"{path.what} {path} does not exist") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceUnavailable(f"{path.what} {path} is not a file")
    return open(fd, "rb", buffering=0, closefd=True)
