"""The store and what it stands on: the layout of its directory, paths beneath allowed roots,
streamed and hashed copies, request bodies, and the indexes (scanning and Redis).

Floor 1: uses only the foundation modules (``errors``, ``refs``, ``settings``, ...).
"""
