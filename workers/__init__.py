"""The Dramatiq side: broker set-up, actors, middleware and the scheduler.

``dramatiq workers`` (or ``paglets-artifacts worker``) imports this package, which sets
the broker up from the environment and registers every actor of the job contract.
"""

from . import actors, broker  # noqa: F401  (registers the broker and the actors)
from . import remote_actors  # noqa: F401  (host-to-host transfers: import_url, export_to_host)
