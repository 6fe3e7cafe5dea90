"""The origin of a URL (scheme, host, port): the one rule by which a URL is matched to a
configured host, for its API key (``Settings.host_key``) and for the allow-list of hosts a
job may contact (:func:`host_allowed`). A URL without a valid origin matches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

#: The port a URL of these schemes has when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443}


def url_origin(url: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of ``url``, lowercased, the port defaulted by the scheme;
    None when the URL or its port cannot be parsed ("http://[::1", "http://h:99999")."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a ValueError for a port out of range or not a number
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``url`` lies under one of ``allowed_hosts`` (same origin, and under its path)."""
    origin = url_origin(url)
    if origin is None:
        return False
    scheme, host, _port = origin
    if scheme not in ("http", "https") or not host:
        return False
    segments = _path_segments(url)
    if any(unquote(part) in (".", "..") for part in segments):
        return False  # a client or server resolves them: the path would leave its prefix
    for allowed in allowed_hosts:
        if url_origin(allowed) != origin:
            continue
        prefix = _path_segments(allowed)
        if segments[: len(prefix)] == prefix:
            return True
    return False


def _path_segments(url: str) -> list[str]:
    """The non-empty segments of a URL's path (one ``url_origin`` could parse)."""
    return [part for part in urlsplit(url).path.split("/") if part]
