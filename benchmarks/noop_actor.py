"""A no-op job kind on the same broker, middleware and job records as the real actors.

Loaded by the job benchmark's worker (``dramatiq workers benchmarks.noop_actor``) and by
its host side, so both agree on the kind.
"""

from __future__ import annotations

from paglets_artifacts import contract

NOOP = contract.JobKind("noop", "paglets_artifacts_benchmark_noop", contract.TRANSFER_QUEUE, {})
contract.KINDS_BY_ACTOR[NOOP.actor_name] = NOOP


def register() -> None:
    from workers.actors import job_actor
    from workers.broker import settings

    @job_actor(NOOP, time_limit_seconds=settings.transfer_time_limit_seconds)
    def noop() -> dict:
        return {}


try:  # in a worker process: register the actor next to the real ones
    import workers  # noqa: F401

    register()
except ImportError:  # pragma: no cover
    pass
