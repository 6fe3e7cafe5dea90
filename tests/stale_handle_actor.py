"""A job kind whose first attempt meets a stale NFS file handle (``ESTALE``), as a worker
does when another machine replaced a file it had open; loaded by a test's worker
(``dramatiq workers.registry stale_handle_actor``) and by its host side."""

from __future__ import annotations

import errno
import sys

from paglets_artifacts.jobs import contract

STALE_ONCE = contract.JobKind("stale_once", "paglets_artifacts_test_stale_once", contract.MAINTENANCE_QUEUE, {})
contract.KINDS_BY_ACTOR[STALE_ONCE.actor_name] = STALE_ONCE


def stale_once() -> dict:
    from workers.middleware import current_job

    attempt = current_job().attempt
    if attempt == 1:
        raise OSError(errno.ESTALE, "Stale file handle", "/data/store/metadata/x.json")
    return {"attempt": attempt}


if "workers.registry" in sys.modules:  # in a worker process: register the actor next to the real ones
    from workers.actors import JobActor, maintenance_time_limit
    from workers.registry import register

    register(JobActor(STALE_ONCE, stale_once, maintenance_time_limit))
