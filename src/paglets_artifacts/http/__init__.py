"""The HTTP side: the ASGI application of a host (paglets' artifact endpoints and the job
endpoints), its metrics, and the client of host-to-host transfers.

Floor 3: uses the job system, the store and the foundation.
"""
