"""The actors of host-to-host transfers: pull from a URL, push to a remote host, and a paglets
host's own client calls: upload a file to a host, download an artifact to a path."""

from __future__ import annotations

import os
from typing import Any

from paglets_artifacts.http.remote import RemoteTransfers
from paglets_artifacts.jobs import contract
from paglets_artifacts.refs import ArtifactRef
from paglets_artifacts.store.paths import resolve_beneath
from paglets_artifacts.store.streams import hashed_read

from .actors import (
    artifact_id_for_job,
    check_owner_alive,
    job_actor,
    keep_unless_owner_deleted,
    open_regular,
    reclaimed_on_failure,
    transfer_time_limit,
)
from .context import context
from .middleware import current_job


@job_actor(contract.IMPORT_URL, time_limit=transfer_time_limit)
def import_url(
    *,
    url: str,
    owner_agent_id: str,
    name: str | None,
    compression: str,
    expires_at: float,
    expected_sha256: str | None,
    expected_size: int | None,
) -> dict[str, Any]:
    ctx = context()
    # The job's own artifact id: a redelivered pull finds what its first attempt committed.
    artifact_id = artifact_id_for_job()
    with RemoteTransfers(context().settings) as remote, reclaimed_on_failure(artifact_id):
        remote.check_allowed(url)  # before anything else: no request to a host not allowed
        check_owner_alive(owner_agent_id, at_start=True)
        result = remote.pull(
            url,
            ctx.store,
            artifact_id=artifact_id,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            expected_size=expected_size,
            progress=current_job().progress,
        )
        keep_unless_owner_deleted(artifact_id, owner_agent_id)
    return result.ref.to_wire()


@job_actor(contract.EXPORT_TO_HOST, time_limit=transfer_time_limit)
def export_to_host(
    *,
    artifact_id: str,
    host_url: str,
    owner_agent_id: str | None,
    name: str | None,
    expires_at: float | None,
    move: bool,
) -> dict[str, Any]:
    ctx = context()
    job_id = current_job().id
    with RemoteTransfers(context().settings) as remote:
        remote.check_allowed(f"{host_url}/artifacts")
        # An attempt that got the remote's confirmation left it here: a redelivered job
        # neither uploads a second copy nor loses the confirmation before a move's delete.
        saved = ctx.records.checkpoint(job_id)
        if saved:
            remote_ref = ArtifactRef.from_wire(saved)
        else:
            remote_ref = remote.push(
                ctx.store,
                artifact_id,
                host_url,
                owner_agent_id=owner_agent_id,
                name=name,
                expires_at=expires_at,
                progress=current_job().progress,
            )
            ctx.records.save_checkpoint(job_id, remote_ref.to_wire())
    if move:
        ctx.store.delete(artifact_id)  # only now: the remote confirmed the verified bytes
    return {**remote_ref.to_wire(), "moved": move, "source_artifact_id": artifact_id}


@job_actor(contract.UPLOAD, time_limit=transfer_time_limit)
def upload(
    *,
    path: str,
    host_url: str,
    owner_agent_id: str,
    name: str | None,
    compression: str,
    expires_at: float,
    expected_sha256: str | None,
) -> dict[str, Any]:
    ctx = context()
    job_id = current_job().id
    source = resolve_beneath(path, context().settings.allowed_roots, what="upload source", forbidden=[ctx.store.root])
    with RemoteTransfers(context().settings) as remote:
        remote.check_allowed(f"{host_url}/artifacts")
        saved = ctx.records.checkpoint(job_id)  # a redelivered upload the remote confirmed
        if saved:
            return saved
        with open_regular(source) as handle:
            size = os.fstat(handle.fileno()).st_size
            # The remote verifies the SHA-256 before it commits: without one given, hash first.
            sha256 = expected_sha256 or hashed_read(handle)[1]
            handle.seek(0)
            remote_ref = remote.upload(
                handle,
                size,
                sha256,
                host_url,
                owner_agent_id=owner_agent_id,
                name=name or source.name,
                compression=compression,
                expires_at=expires_at,
                progress=current_job().progress,
                what=f"upload source {source}",
            )
        ctx.records.save_checkpoint(job_id, remote_ref.to_wire())
    return remote_ref.to_wire()


@job_actor(contract.DOWNLOAD, time_limit=transfer_time_limit)
def download(
    *, url: str, target: str, expected_sha256: str | None, expected_size: int | None, move: bool
) -> dict[str, Any]:
    target_path = resolve_beneath(
        target, context().settings.allowed_roots, what="download target", forbidden=[context().store.root]
    )
    with RemoteTransfers(context().settings) as remote:
        size, sha256 = remote.download(
            url,
            target_path,
            expected_sha256=expected_sha256,
            expected_size=expected_size,
            part_token=artifact_id_for_job(),
            fsync=context().settings.fsync,
            progress=current_job().progress,
        )
        if move:
            remote.delete(url)  # only now: the target holds the verified bytes
    return {"url": url, "target": str(target_path), "size_bytes": size, "sha256": sha256, "moved": move}
