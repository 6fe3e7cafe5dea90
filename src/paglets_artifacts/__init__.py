"""paglets-artifacts: the paglets artifact store, with its streaming work run by Dramatiq workers.

A host imports from here: the store and its value types (compatible on disk with a
paglets host), the job contract and :class:`ArtifactJobs` to enqueue work.
"""

from .errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    AuthenticationError,
    ChecksumMismatch,
    ForbiddenError,
    HostNotAllowed,
    InvalidInput,
    JobExpired,
    JobFailed,
    JobTimeout,
    OwnerDeleted,
    PathNotAllowed,
    QuotaExceeded,
    RemoteError,
    SizeMismatch,
    SourceUnavailable,
    StorageFull,
    TransferError,
    Transient,
    UploadTooSlow,
)
from .jobs.client import ArtifactJobs, Job
from .jobs.records import JobRecord
from .refs import (
    ARTIFACT_COPY,
    ARTIFACT_MOVE,
    ARTIFACT_STATUS_AVAILABLE,
    ARTIFACT_STATUS_FAILED,
    ARTIFACT_STATUS_REGISTERED,
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
    DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
    STREAM_CHUNK_BYTES,
    ArtifactRef,
    ArtifactWriteResult,
    PagletFileRef,
)
from .settings import Settings, SettingsError
from .store.artifacts import (
    ArtifactStore,
    OwnerDeletion,
    SweepReport,
    WritePlan,
    paglet_file_ref_from_path,
    safe_target_filename,
)
from .store.bodies import ChunkedRequestReader, LimitedRequestReader
from .store.layout import StoreLayout
from .store.streams import copy_path, copy_stream, file_sha256

__all__ = [
    "ARTIFACT_COPY",
    "ARTIFACT_MOVE",
    "ARTIFACT_STATUS_AVAILABLE",
    "ARTIFACT_STATUS_FAILED",
    "ARTIFACT_STATUS_REGISTERED",
    "DEFAULT_ARTIFACT_MAX_BYTES",
    "DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS",
    "DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES",
    "STREAM_CHUNK_BYTES",
    "ArtifactJobs",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactTooLarge",
    "ArtifactWriteResult",
    "AuthenticationError",
    "ChecksumMismatch",
    "ChunkedRequestReader",
    "ForbiddenError",
    "HostNotAllowed",
    "InvalidInput",
    "Job",
    "JobExpired",
    "JobFailed",
    "JobRecord",
    "JobTimeout",
    "LimitedRequestReader",
    "OwnerDeleted",
    "OwnerDeletion",
    "PagletFileRef",
    "PathNotAllowed",
    "QuotaExceeded",
    "RemoteError",
    "Settings",
    "SettingsError",
    "SizeMismatch",
    "SourceUnavailable",
    "StorageFull",
    "StoreLayout",
    "SweepReport",
    "TransferError",
    "Transient",
    "UploadTooSlow",
    "WritePlan",
    "copy_path",
    "copy_stream",
    "file_sha256",
    "paglet_file_ref_from_path",
    "safe_target_filename",
]
