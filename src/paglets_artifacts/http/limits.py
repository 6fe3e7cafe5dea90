"""The bounds the HTTP host puts on what a client may send and ask, in one place."""

#: Largest JSON body the job endpoints accept.
MAX_JOB_BODY_BYTES = 64 * 1024
#: Largest JSON body of a batch (an array of job arguments, ``contract.MAX_BATCH_JOBS`` at most).
MAX_JOB_BATCH_BODY_BYTES = 4 * 1024 * 1024
#: Most job records ``GET /jobs`` returns.
MAX_JOB_LIST = 1000
#: Deepest nesting of arrays and objects a job body may have. Job arguments are one flat
#: object; the bound is checked before parsing, since Python's parser recurses per level.
MAX_JSON_DEPTH = 32
#: Uploads received at once; more wait their turn (``upload_slot_wait_seconds`` at most).
#: Uploads hold a thread each for as long as the client sends, so they get their own pool
#: and never starve the other endpoints.
MAX_CONCURRENT_UPLOADS = 64
#: How far an upload's quota reservation may run ahead of the bytes that arrived: a client
#: that declares a size and sends nothing holds this much, not the size it declared.
UPLOAD_RESERVATION_STEP_BYTES = 16 * 1024 * 1024
#: ``Retry-After`` of a 503 answered while Redis cannot be reached.
REDIS_RETRY_AFTER_SECONDS = 5
#: Largest request line plus headers accepted (h11 stopped at 16 KiB; httptools has no bound).
MAX_REQUEST_HEAD_BYTES = 64 * 1024
#: Most dead letters ``GET /dead-letters`` returns.
MAX_DEAD_LETTER_LIST = 1000
#: Largest body ``POST /jobs/{id}/cancel`` accepts (``{"by": ...}``).
MAX_CANCEL_BODY_BYTES = 4096
#: Event streams (``GET /jobs/{id}/events``) served at once; more are ``503`` with ``Retry-After``.
MAX_CONCURRENT_EVENT_STREAMS = 100
