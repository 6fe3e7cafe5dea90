"""A no-op job kind on the same broker, middleware and job records as the real actors.

Loaded by the job benchmark's worker (``dramatiq workers.registry benchmarks.noop_actor``)
and by its host side, so both agree on the kind.
"""

from __future__ import annotations

import sys

from paglets_artifacts.jobs import contract

NOOP = contract.JobKind("noop", "paglets_artifacts_benchmark_noop", contract.TRANSFER_QUEUE, {})
contract.KINDS_BY_ACTOR[NOOP.actor_name] = NOOP


def noop() -> dict:
    return {}


if "workers.registry" in sys.modules:  # in a worker process: register the actor next to the real ones
    from workers.actors import JobActor, transfer_time_limit
    from workers.registry import register

    register(JobActor(NOOP, noop, transfer_time_limit))
