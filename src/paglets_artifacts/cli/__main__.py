"""``python -m paglets_artifacts.cli``: the ``paglets-artifacts`` command."""

from .commands import main

main()
