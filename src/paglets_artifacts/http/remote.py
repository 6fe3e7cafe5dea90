"""Host-to-host transfers over HTTP: pull an artifact from a URL, push one to a host.

Both directions stream (one chunk in memory) and verify before anything is committed:

- **pull** reads a remote host's ``GET /artifacts/{id}`` (or any allowed http(s) URL)
  straight into :meth:`ArtifactStore.create_from_stream`, which checks the size and the
  SHA-256 (the caller's expected value, else the remote ref's, else the
  ``X-Paglets-Artifact-Sha256`` header) before the artifact becomes visible;
- **push** streams a blob to a remote host's ``POST /artifacts`` with ``sha256`` and
  ``size``, so the remote verifies before it commits; the answer is the remote ref.

Least authority: every URL must lie under one of ``settings.allowed_hosts`` (same scheme,
host and port, and under its path), checked before any request; redirects are never
followed. Each request carries the per-host key of ``settings.host_key(url)``.

Errors: a 4xx answer is a permanent :class:`RemoteError` carrying the remote's error class
and message; a 5xx, 408 or 429 answer is :class:`RemoteUnavailable` (a ``Transient``), and
connection errors and timeouts are ``httpx.TransportError``: a job retries both with
backoff (``workers.broker.is_transient``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ..errors import ChecksumMismatch, HostNotAllowed, InvalidInput, RemoteError, SizeMismatch, Transient
from ..origins import host_allowed
from ..redaction import redact_url
from ..refs import STREAM_CHUNK_BYTES, ArtifactRef, ArtifactWriteResult, validate_sha256
from ..settings import Settings
from ..store.artifacts import ArtifactStore, Progress
from ..store.files import create_exclusive, write_all
from ..store.paths import AllowedPath

#: Timeouts of every remote request: 10 s to connect, 60 s of silence while reading or writing.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
#: Header that carries a blob's SHA-256 on a download (the paglets name).
SHA256_HEADER = "X-Paglets-Artifact-Sha256"
#: Most bytes of an error answer that are read.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Answers that mean "try again later" rather than "no".
TRANSIENT_STATUSES = frozenset({408, 425, 429})

_ARTIFACT_PATH = re.compile(r"/artifacts/([0-9a-fA-F]+)/?$")


class RemoteUnavailable(Transient, ConnectionError):
    """A remote host answered 5xx, 408, 425 or 429: failing or overloaded, worth another try.

    Also a ``ConnectionError``, as it always was, for callers that catch one.
    """

    def __init__(self, message: str, *, status: int = 0):
        super().__init__(message)
        self.status = status


def check_allowed(url: str, allowed_hosts: Iterable[str]) -> None:
    """Raise :class:`HostNotAllowed` unless ``url`` lies under an allowed host."""
    hosts = tuple(allowed_hosts)
    if not host_allowed(url, hosts):
        listed = ", ".join(hosts) or "none (PAGLETS_ARTIFACTS_ALLOWED_HOSTS is empty)"
        raise HostNotAllowed(f"remote host of {redact_url(url)} is not allowed; allowed hosts: {listed}")


class _ChunkIteratorStream:
    """A ``read(n)`` over an iterator of byte chunks (returns one chunk per call)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


class _BlobBody:
    """A blob as an upload body: at most ``size`` bytes, hashed as they are sent."""

    def __init__(self, reader: Any, size: int, progress: Progress | None):
        self._reader = reader
        self.size = size
        self._progress = progress
        self.sent = 0
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.size:
            chunk = self._reader.read(min(STREAM_CHUNK_BYTES, self.size - self.sent))
            if not chunk:
                raise SizeMismatch(f"local blob ended after {self.sent} of {self.size} bytes")
            self.sent += len(chunk)
            self.digest.update(chunk)
            if self._progress is not None:
                self._progress(self.sent, self.size)
            yield chunk


class RemoteTransfers:
    """Pulls artifacts from and pushes them to allowed remote hosts.

    Parameters:
      settings(Settings): ``allowed_hosts`` and ``host_api_keys`` are used.
      timeout(httpx.Timeout): timeouts of every request (default :data:`DEFAULT_TIMEOUT`).
      client(httpx.Client|None): an existing client (its redirect policy is not changed).
    """

    def __init__(
        self, settings: Settings, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT, client: httpx.Client | None = None
    ):
        self.settings = settings
        self._owned = client is None
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self) -> RemoteTransfers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_allowed(self, url: str) -> None:
        check_allowed(url, self.settings.allowed_hosts)

    def _headers(self, url: str, **extra: str) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", **extra}
        key = self.settings.host_key(url)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # ------------------------------------------------------------ pull

    def pull(
        self,
        url: str,
        store: ArtifactStore,
        *,
        artifact_id: str | None = None,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        progress: Progress | None = None,
    ) -> ArtifactWriteResult:
        """Import ``url`` into ``store``; verified (size, SHA-256) before it is committed.

        For a host's ``.../artifacts/{id}`` URL the remote ref is read first: its name,
        compression, size and SHA-256 fill in what the caller left open. ``artifact_id``
        makes the import idempotent (an artifact already committed under it is returned
        without a request).
        """
        self.check_allowed(url)
        if artifact_id is not None:
            existing = store.adopt_committed(artifact_id)  # before a request: none is needed then
            if existing is not None:
                return existing
        expected = validate_sha256(expected_sha256, field="expected sha256") if expected_sha256 else None
        remote_ref = self._remote_ref(url) if _ARTIFACT_PATH.search(urlsplit(url).path) else None
        with self.client.stream("GET", url, headers=self._headers(url)) as response:
            _raise_for_status(response, url)
            sha, size = _claims(response, url, remote_ref, expected, expected_size)
            return store.create_from_stream(
                _ChunkIteratorStream(response.iter_bytes(STREAM_CHUNK_BYTES)),
                size_bytes=-1 if size is None else size,
                owner_agent_id=owner_agent_id,
                name=name or (remote_ref.name if remote_ref else "") or _url_file_name(url),
                compression=compression or (remote_ref.compression if remote_ref else ""),
                expires_at=expires_at,
                expected_sha256=sha,
                artifact_id=artifact_id,
                progress=progress,
            )

    def _remote_ref(self, url: str) -> ArtifactRef:
        parts = urlsplit(url)
        meta_url = parts._replace(path=parts.path.rstrip("/") + "/metadata", query="", fragment="").geturl()
        response = self.client.get(meta_url, headers=self._headers(meta_url, Accept="application/json"))
        _raise_for_status(response, meta_url)
        return _ref_from_answer(response, meta_url)

    # ------------------------------------------------------------ push

    def push(
        self,
        store: ArtifactStore,
        artifact_id: str,
        host_url: str,
        *,
        owner_agent_id: str | None = None,
        name: str | None = None,
        expires_at: float | None = None,
        progress: Progress | None = None,
    ) -> ArtifactRef:
        """Upload an artifact to ``host_url``'s ``POST /artifacts``; return the remote ref.

        The remote verifies ``sha256`` and ``size`` before it commits; the ref it answers
        is checked again here. Owner, name and expiry default to the local artifact's.
        """
        url = self._upload_url(host_url)
        ref = store.ref(artifact_id)
        with store.open_reader(artifact_id) as reader:
            return self._post(
                url,
                reader,
                ref.size_bytes,
                ref.sha256,
                progress,
                owner_agent_id=ref.owner_agent_id if owner_agent_id is None else owner_agent_id,
                name=ref.name if name is None else name,
                compression=ref.compression,
                expires_at=ref.expires_at if expires_at is None else expires_at,
                what=f"local artifact {artifact_id} is corrupt: its blob",
            )

    def upload(
        self,
        reader: Any,
        size: int,
        sha256: str,
        host_url: str,
        *,
        owner_agent_id: str = "",
        name: str = "",
        compression: str = "",
        expires_at: float = 0.0,
        progress: Progress | None = None,
        what: str = "the upload",
    ) -> ArtifactRef:
        """Upload ``size`` bytes of ``reader`` (whose SHA-256 is ``sha256``) to ``host_url``'s
        ``POST /artifacts``, as paglets' ``HostClient.upload_artifact`` does; return the remote ref."""
        return self._post(
            self._upload_url(host_url),
            reader,
            size,
            sha256,
            progress,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            what=what,
        )

    def _upload_url(self, host_url: str) -> str:
        url = f"{host_url.rstrip('/')}/artifacts"
        self.check_allowed(url)
        return url

    def _post(
        self,
        url: str,
        reader: Any,
        size: int,
        sha256: str,
        progress: Progress | None,
        *,
        owner_agent_id: str,
        name: str,
        compression: str,
        expires_at: float,
        what: str,
    ) -> ArtifactRef:
        params = {
            "owner_agent_id": owner_agent_id,
            "name": name,
            "compression": compression,
            "expires_at": repr(float(expires_at)),
            "sha256": sha256,
            "size": str(size),
        }
        headers = self._headers(
            url,
            **{
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Accept": "application/json",
            },
        )
        body = _BlobBody(reader, size, progress)
        response = self.client.post(url, params=params, content=body, headers=headers)
        try:
            _raise_for_status(response, url)
        except RemoteError as exc:
            # The remote found the bytes wrong: when what we sent does not hash to what we
            # announced, the fault is ours, and that is what the caller must hear.
            if body.sent == size and body.digest.hexdigest() != sha256:
                raise ChecksumMismatch(f"{what} hashes to {body.digest.hexdigest()}, expected {sha256}") from exc
            raise
        remote = _ref_from_answer(response, url)
        if remote.sha256 != sha256 or remote.size_bytes != size:
            raise ChecksumMismatch(
                f"{redact_url(url)} stored {remote.size_bytes} bytes with SHA-256 {remote.sha256}, "
                f"expected {size} bytes with {sha256}"
            )
        return remote

    # ------------------------------------------------------------ download to a path

    def download(
        self,
        url: str,
        target: AllowedPath,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        part_token: str,
        fsync: bool = True,
        progress: Progress | None = None,
    ) -> tuple[int, str]:
        """Write ``url``'s bytes to ``target`` through a hidden ``.part`` beside it (named by
        ``part_token``, so a retry replaces a killed attempt's), verified (size, SHA-256: the
        caller's, the remote ref's, the header's) before the rename, as paglets'
        ``HostClient.download_artifact`` does. The ``.part`` is created, renamed and removed
        beneath the target's allowed root (no link followed). Returns (size, sha256)."""
        self.check_allowed(url)
        expected = validate_sha256(expected_sha256, field="expected sha256") if expected_sha256 else None
        remote_ref = self._remote_ref(url) if _ARTIFACT_PATH.search(urlsplit(url).path) else None
        name, part_name = target.name, f".{target.name}.{part_token}.part"
        dir_fd = target.open_parent(create=True)
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise InvalidInput(f"download target is a directory: {target}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part_name, dir_fd=dir_fd)  # a killed attempt's, of the same job
            with self.client.stream("GET", url, headers=self._headers(url)) as response:
                _raise_for_status(response, url)
                sha, size = _claims(response, url, remote_ref, expected, expected_size)
                fd = create_exclusive(part_name, dir_fd=dir_fd)
                try:
                    digest, written = hashlib.sha256(), 0
                    for chunk in response.iter_bytes(STREAM_CHUNK_BYTES):
                        written += len(chunk)
                        if size is not None and written > size:
                            raise SizeMismatch(f"{redact_url(url)} sent more than its {size} bytes")
                        digest.update(chunk)
                        write_all(fd, chunk)
                        if progress is not None:
                            progress(written, -1 if size is None else size)
                    if size is not None and written != size:
                        raise SizeMismatch(f"{redact_url(url)} sent {written} of {size} bytes")
                    if sha and digest.hexdigest() != sha:
                        raise ChecksumMismatch(
                            f"{redact_url(url)} sent bytes with SHA-256 {digest.hexdigest()}, expected {sha}"
                        )
                    if fsync:
                        os.fsync(fd)
                    os.close(fd)
                    fd = -1
                    os.replace(part_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    if fsync:
                        os.fsync(dir_fd)
                except BaseException:
                    if fd >= 0:
                        os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(part_name, dir_fd=dir_fd)
                    raise
        finally:
            os.close(dir_fd)
        return written, digest.hexdigest()

    def delete(self, url: str) -> None:
        """``DELETE`` a remote artifact (a host answers ok when it is already gone)."""
        self.check_allowed(url)
        _raise_for_status(self.client.delete(url, headers=self._headers(url, Accept="application/json")), url)


# ---------------------------------------------------------------------- answers


def _error_payload(response: httpx.Response) -> dict[str, Any]:
    raw = bytearray()
    try:
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.StreamConsumed:
        raw = bytearray(response.content[:MAX_ERROR_BODY_BYTES])
    try:
        payload = json.loads(bytes(raw))
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return {"error": bytes(raw[:200]).decode("utf-8", "replace").strip() or response.reason_phrase}
    return payload


def _raise_for_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 300:
        return
    url = redact_url(url)  # the message goes into job records and logs
    if status < 400:
        location = response.headers.get("location", "")
        raise RemoteError(
            f"{url} answered {status} (a redirect to {location or '?'}); redirects are not followed",
            remote_type="Redirect",
            status=status,
        )
    payload = _error_payload(response)
    remote_type = str(payload.get("error_class") or payload.get("error_type") or f"HTTP{status}")
    message = str(payload.get("error") or response.reason_phrase)
    text = f"{url} answered {status} {remote_type}: {message}"
    if status >= 500 or status in TRANSIENT_STATUSES:
        raise RemoteUnavailable(text, status=status)
    raise RemoteError(text, remote_type=remote_type, status=status)


def _ref_from_answer(response: httpx.Response, url: str) -> ArtifactRef:
    try:
        payload = response.json()
        return ArtifactRef.from_wire(payload["artifact"])
    except Exception as exc:  # any malformed answer is the remote's fault, and permanent
        raise RemoteError(
            f"{redact_url(url)} answered something that is not an artifact ref: {exc}", remote_type="InvalidAnswer"
        ) from None


def _announced_sha(response: httpx.Response, url: str) -> str | None:
    value = response.headers.get(SHA256_HEADER)
    if not value:
        return None
    try:
        return validate_sha256(value.strip(), field=SHA256_HEADER)
    except Exception:
        raise RemoteError(
            f"{redact_url(url)} sent an invalid {SHA256_HEADER} header {value[:80]!r}", remote_type="InvalidAnswer"
        ) from None


def _content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None  # the length of the encoded body, not of the bytes we store
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _claims(
    response: httpx.Response, url: str, remote_ref: ArtifactRef | None, sha256: str | None, size: int | None
) -> tuple[str | None, int | None]:
    """The SHA-256 and size a download must have: the caller's, the remote ref's and the
    answer's headers, which must agree (``ChecksumMismatch`` / ``SizeMismatch`` at once if not)."""
    sha = _agree(
        "SHA-256",
        url,
        ChecksumMismatch,
        ("expected", sha256),
        ("remote ref", remote_ref.sha256 if remote_ref else None),
        (SHA256_HEADER, _announced_sha(response, url)),
    )
    length = _agree(
        "size",
        url,
        SizeMismatch,
        ("expected", size),
        ("remote ref", remote_ref.size_bytes if remote_ref else None),
        ("Content-Length", _content_length(response)),
    )
    return sha, length


def _agree(what: str, url: str, error: type[Exception], *claims: tuple[str, Any]) -> Any:
    """The first value given among ``claims``; ``error`` at once if two of them differ."""
    given = [(label, value) for label, value in claims if value not in (None, "")]
    if not given:
        return None
    label, value = given[0]
    for other_label, other in given[1:]:
        if other != value:
            raise error(f"{what} of {redact_url(url)}: {label} says {value}, {other_label} says {other}")
    return value


def _url_file_name(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name
