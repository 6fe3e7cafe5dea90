"""Authentication of requests: the API key as a bearer token."""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (
    AuthenticationError,
)
from .responses import transfer_error_response

logger = logging.getLogger("paglets_artifacts.http")


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer <api_key>``.

    Parameters:
      app: the wrapped ASGI application.
      api_key(str): the expected key; compared in constant time.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = transfer_error_response(AuthenticationError("Authentication required"))
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return (
                    scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token.strip(), self._expected)
                )
        return False
