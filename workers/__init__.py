"""The Dramatiq side: broker set-up, actors, middleware and the scheduler.

Importing this package, or any module of it but one, builds no broker and registers no
actor: a worker process loads :mod:`workers.registry` (``python -m dramatiq
workers.registry``, which ``paglets-artifacts worker`` runs), and the scheduler
(``python -m workers.scheduler``) needs neither.
"""
