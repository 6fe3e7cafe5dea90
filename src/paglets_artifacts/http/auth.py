"""Authentication of requests: the API key as a bearer token, or the dashboard's session cookie.

A browser cannot send a bearer header for a page, so ``POST /ui/login`` (form field ``key``)
with the right key sets a cookie holding an HMAC of the key (never the key) and redirects to
``/ui``; a wrong key shows the form again with an error and sets nothing. ``GET /ui``
without a valid credential shows that form. Every other request without one is ``401``.
When the cookie is the credential of a state-changing request, its ``Origin`` (or else
``Referer``) must name this host, else ``403``: another site cannot make the browser act.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    AuthenticationError,
)
from .dashboard import login_page
from .responses import transfer_error_response

logger = logging.getLogger("paglets_artifacts.http")

#: The dashboard's session cookie.
SESSION_COOKIE = "paglets_artifacts_session"
#: The largest login form body read.
MAX_LOGIN_BODY_BYTES = 4096
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_token(api_key: str) -> str:
    """What the session cookie holds: an HMAC of the key, not the key."""
    return hmac.new(api_key.encode("utf-8"), b"paglets-artifacts dashboard session", hashlib.sha256).hexdigest()


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value)
    return None


def _same_origin(scope: Scope) -> bool:
    host = _header(scope, b"host")
    source = _header(scope, b"origin") or _header(scope, b"referer")
    if not host or not source or source == b"null":
        return False
    return urlsplit(source.decode("latin-1")).netloc.lower() == host.decode("latin-1").lower()


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer <api_key>`` or the session cookie.

    Parameters:
      app: the wrapped ASGI application.
      api_key(str): the expected key; compared in constant time.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = api_key.encode("utf-8")
        self._session = session_token(api_key).encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/ui/login" and method == "POST":
            await self._login(scope, receive, send)
            return
        if self._bearer(scope):
            await self.app(scope, receive, send)
            return
        if self._cookie(scope):
            if method in _SAFE_METHODS or _same_origin(scope):
                await self.app(scope, receive, send)
                return
            forbidden = JSONResponse(
                {"error": "a request with the session cookie must come from this host's pages (Origin or Referer)"},
                status_code=403,
            )
            await forbidden(scope, receive, send)
            return
        if path == "/ui" and method in ("GET", "HEAD"):
            await login_page(status_code=401)(scope, receive, send)
            return
        response = transfer_error_response(AuthenticationError("Authentication required"))
        await response(scope, receive, send)

    def _bearer(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token.strip(), self._expected)

    def _cookie(self, scope: Scope) -> bool:
        raw = _header(scope, b"cookie")
        if not raw:
            return False
        for part in raw.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == SESSION_COOKIE.encode("ascii") and hmac.compare_digest(value.strip(), self._session):
                return True
        return False

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY_BYTES:
                await login_page("The login form is too large.", status_code=413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        if not _same_origin(scope):
            await login_page("Sign in from this host's page.", status_code=403)(scope, receive, send)
            return
        keys = parse_qs(body.decode("utf-8", "replace")).get("key", [""])
        if not hmac.compare_digest(keys[0].encode("utf-8"), self._expected):
            await login_page("That is not the API key.", status_code=401)(scope, receive, send)
            return
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session_token(self._expected.decode("utf-8")), httponly=True, samesite="strict", path="/"
        )
        await response(scope, receive, send)
