"""Errors raised by the store, the job system and the HTTP layer.

Every error a caller can act on is a :class:`TransferError` subclass (the class paglets'
own client knows), so ``except TransferError`` keeps working for code written against
the reference store. Job records carry the class *name*; :func:`error_class` maps it back.

An error worth another try says so by being a :class:`Transient` (Dramatiq's ``Retry`` is
the model): the workers retry it with backoff, and the command line names it as such.
"""

from __future__ import annotations


class Transient(Exception):
    """Retry with backoff: what failed may work in a moment (a remote host overloaded, an index
    being rebuilt, a record Redis could not take, another attempt's files in the way).

    Never a ``TransferError``: those are permanent and fail a job at once.
    """


class TransferError(Exception):
    """An artifact could not be stored, read, exported or moved."""


class InvalidInput(TransferError):
    """An argument, header, id or wire payload is malformed."""


class ArtifactNotFound(TransferError):
    """No artifact with that id exists in the store."""


class ChecksumMismatch(TransferError):
    """The bytes do not hash to the expected SHA-256."""


class SizeMismatch(TransferError):
    """The body is shorter or longer than its declared size."""


class ArtifactTooLarge(TransferError):
    """The artifact exceeds the store's maximum artifact size."""


class QuotaExceeded(TransferError):
    """Storing the artifact would push the store over its quota."""


class UploadTooSlow(TransferError):
    """An upload's body stopped, or came slower than the server's minimum rate, and was cut."""


class StorageFull(TransferError):
    """The filesystem of the store or of an export target has no space (or disk quota) left."""


class SourceUnavailable(TransferError):
    """An import source is missing, not a regular file, or unreadable."""


class PathNotAllowed(TransferError):
    """A source or target path lies outside the configured allowed roots."""


class HostNotAllowed(TransferError):
    """A remote host is not on the allow-list of hosts a job may contact."""


class OwnerDeleted(TransferError):
    """The artifact's owner was deleted while the import was running."""


class RemoteError(TransferError):
    """A remote host refused a transfer; ``remote_type`` is the error type it answered."""

    def __init__(self, message: str, *, remote_type: str = "TransferError", status: int = 0):
        super().__init__(message)
        self.remote_type = remote_type
        self.status = status


class AuthenticationError(TransferError):
    """A request carried no valid API key."""


class ForbiddenError(TransferError):
    """A request was authenticated but is not allowed."""


class Superseded(Transient):
    """Another attempt of the same job replaced this attempt's files; this one gives way.

    Transient: the job is retried, and the retry finds the other attempt's artifact (or
    makes it)."""


class JobTimeout(TimeoutError):
    """A job did not finish within the time a caller waited for it."""


class JobFailed(TransferError):
    """A job failed with an error type this process does not know."""


class JobExpired(TransferError):
    """A job was not started before its age limit (its enqueuer stopped waiting): it never ran."""


class JobCanceled(TransferError):
    """A job was canceled (``Job.cancel``): ``Job.wait`` raises it, and so does a running
    attempt that sees the cancel (it stops, cleans up, and leaves no artifact)."""


class JobConflict(TransferError):
    """What was asked of a job does not fit its state: cancelling a job that already ended,
    retrying one that neither failed nor was canceled. Nothing was changed; ``state`` is the
    job's state."""

    def __init__(self, message: str, *, state: str = ""):
        super().__init__(message)
        self.state = state


class IdempotencyConflict(TransferError):
    """An enqueue reused an idempotency key that a different request (another kind or other
    arguments) holds within its retention time; nothing was enqueued. ``job_id`` is the job
    the key holds."""

    def __init__(self, message: str, *, job_id: str = ""):
        super().__init__(message)
        self.job_id = job_id


_KNOWN: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        TransferError,
        InvalidInput,
        ArtifactNotFound,
        ChecksumMismatch,
        SizeMismatch,
        ArtifactTooLarge,
        QuotaExceeded,
        StorageFull,
        UploadTooSlow,
        SourceUnavailable,
        PathNotAllowed,
        HostNotAllowed,
        OwnerDeleted,
        RemoteError,
        AuthenticationError,
        ForbiddenError,
        JobExpired,
        JobCanceled,
    )
}


def error_class(name: str) -> type[Exception]:
    """The exception class for an error type name from a job record (``JobFailed`` if unknown)."""
    return _KNOWN.get(name, JobFailed)
