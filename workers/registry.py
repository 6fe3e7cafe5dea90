"""What a worker process loads: the broker, built from the environment and made Dramatiq's,
with every actor of the job contract registered on it.

``paglets-artifacts worker`` runs ``python -m dramatiq workers.registry``; a module with
more actors (a benchmark's) comes after it on the command line and calls :func:`register`.
This is the only module of ``workers`` whose import builds or registers anything.
"""

from __future__ import annotations

import logging

import dramatiq

from paglets_artifacts.settings import SettingsError

from . import actors, callbacks, remote_actors
from .actors import JobActor
from .broker import make_broker
from .context import worker_settings

#: Every job of the contract, by the module that runs it.
JOB_ACTORS: tuple[JobActor, ...] = (
    actors.import_file,
    actors.export,
    actors.sweep,
    actors.delete_owner,
    actors.reindex,
    actors.reconcile,
    actors.checksum,
    remote_actors.import_url,
    remote_actors.export_to_host,
    remote_actors.upload,
    remote_actors.download,
)

settings = worker_settings()
logging.getLogger("paglets_artifacts").setLevel(logging.INFO)
try:
    broker = make_broker(settings)
except SettingsError as exc:  # a REDIS_URL that cannot be used: one line, not a traceback
    raise SystemExit(f"paglets-artifacts: configuration error: {exc}") from None
dramatiq.set_broker(broker)


def register(job: JobActor) -> dramatiq.Actor:
    """Declare ``job``'s actor on this process's broker."""
    return job.register(broker, settings)


#: The registered actors, by actor name.
ACTORS: dict[str, dramatiq.Actor] = {job.kind.actor_name: register(job) for job in JOB_ACTORS}
#: The completion callbacks' actor, on its own queue.
CALLBACK_ACTOR: dramatiq.Actor = callbacks.register(broker, settings)
