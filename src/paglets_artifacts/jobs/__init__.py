"""The job system's host side: the contract hosts and workers share, job records, the
client that enqueues and follows jobs, and the launcher of worker processes.

Floor 2: uses the store and the foundation; never ``workers``.
"""
