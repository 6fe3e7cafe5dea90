"""The origin of a URL (scheme, host, port): the one rule by which a URL is matched to a
configured host, for its API key (``Settings.host_key``) and for the allow-list of hosts a
job may contact (``remote.host_allowed``). A URL without a valid origin matches nothing.
"""

from __future__ import annotations

from urllib.parse import urlsplit

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
