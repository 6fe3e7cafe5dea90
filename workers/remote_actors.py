"""The actors of host-to-host transfers: pull from a URL, push to a remote host."""

from __future__ import annotations

import json
from typing import Any

from paglets_artifacts import contract
from paglets_artifacts.refs import ArtifactRef
from paglets_artifacts.remote import RemoteTransfers

from .actors import artifact_id_for_job, check_owner_alive, job_actor, keep_unless_owner_deleted, reclaimed_on_failure
from .broker import settings
from .context import context
from .middleware import current_job


@job_actor(contract.IMPORT_URL, time_limit_seconds=settings.transfer_time_limit_seconds)
def import_url(
    *, url: str, owner_agent_id: str, name: str | None, compression: str, expires_at: float,
    expected_sha256: str | None, expected_size: int | None,
) -> dict[str, Any]:
    ctx = context()
    # The job's own artifact id: a redelivered pull finds what its first attempt committed.
    artifact_id = artifact_id_for_job()
    with RemoteTransfers(settings) as remote, reclaimed_on_failure(artifact_id):
        remote.check_allowed(url)  # before anything else: no request to a host not allowed
        check_owner_alive(owner_agent_id)
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


@job_actor(contract.EXPORT_TO_HOST, time_limit_seconds=settings.transfer_time_limit_seconds)
def export_to_host(
    *, artifact_id: str, host_url: str, owner_agent_id: str | None, name: str | None,
    expires_at: float | None, move: bool,
) -> dict[str, Any]:
    ctx = context()
    record_key = ctx.records.key(current_job().id)
    with RemoteTransfers(settings) as remote:
        remote.check_allowed(f"{host_url}/artifacts")
        # An attempt that got the remote's confirmation left it here: a redelivered job
        # neither uploads a second copy nor loses the confirmation before a move's delete.
        saved = ctx.client.hget(record_key, "checkpoint")
        if saved:
            remote_ref = ArtifactRef.from_wire(json.loads(saved))
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
            ctx.client.hset(record_key, "checkpoint", json.dumps(remote_ref.to_wire()))
    if move:
        ctx.store.delete(artifact_id)  # only now: the remote confirmed the verified bytes
    return {**remote_ref.to_wire(), "moved": move, "source_artifact_id": artifact_id}
