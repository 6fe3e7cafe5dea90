"""Authentication of requests: the API key as a bearer token, or the dashboard's cookie.

A browser cannot send a bearer header for a page or an EventSource, so ``POST /ui/login``
(:mod:`.dashboard`) sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the key.
:class:`BearerAuth` accepts it as well as the header; a request whose only credential is
the cookie and that carries an ``Origin`` other than the host's own is refused (CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (
    AuthenticationError,
)
from .responses import transfer_error_response

logger = logging.getLogger("paglets_artifacts.http")

#: The dashboard's session cookie.
COOKIE_NAME = "paglets_artifacts_session"
#: Paths answered without a credential: the dashboard shows its login form itself.
OPEN_PATHS = frozenset({"/ui", "/ui/login"})


def cookie_value(api_key: str) -> str:
    """What the cookie holds: an HMAC of the key (never the key itself)."""
    return hmac.new(api_key.encode("utf-8"), b"paglets-artifacts dashboard", hashlib.sha256).hexdigest()


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of two texts."""
    return bool(given) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    origin = headers.get(b"origin")
    if origin is None:
        return True  # not sent by a browser's cross-site fetch or form
    host = headers.get(b"host", b"")
    return origin.partition(b"://")[2] == host


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer <api_key>``.

    Parameters:
      app: the wrapped ASGI application.
      api_key(str): the expected key; compared in constant time.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = api_key.encode("utf-8")
        self._cookie = cookie_value(api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = transfer_error_response(AuthenticationError("Authentication required"))
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers", ()))
        if b"authorization" in headers:
            scheme, _, token = headers[b"authorization"].partition(b" ")
            return scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token.strip(), self._expected)
        if scope.get("path") in OPEN_PATHS:
            return True
        cookie = _cookie(headers.get(b"cookie", b""))
        if not key_matches(cookie, self._cookie):
            return False
        return scope.get("method") in ("GET", "HEAD") or _same_origin(headers)


def _cookie(header: bytes) -> str:
    for part in header.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            return value
    return ""
