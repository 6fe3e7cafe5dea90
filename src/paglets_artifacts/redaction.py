"""The one rule for showing a URL without its secrets (messages, logs, records, ``config``).

A URL is shown with

- its userinfo masked: ``redis://user:***@host`` (the user name stays, it names an ACL
  user), ``https://***@host`` for a user part without a password (a token, often);
- the value of every secret query or fragment parameter replaced by ``***``. A parameter
  is secret when its name, compared case-insensitively, is one of
  :data:`SECRET_PARAMETERS`, starts with one of :data:`SECRET_PREFIXES` (``X-Amz-*`` of
  pre-signed S3 URLs, ``X-Goog-*``), or contains one of :data:`SECRET_WORDS`
  (``upload_token``, ``client_secret``, ...).

Everything else is left as it was, character for character, so a redacted URL still
says where it points. The rule works on text and never raises, so a URL that does not
parse is redacted too.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

#: What a secret is replaced with.
MASK = "***"
#: Query parameter names whose value is a secret (lower case).
SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "signature",
        "sig",
        "secret",
        "key",
        "api_key",
        "apikey",
        "access_token",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "sessionid",
    }
)
#: Name prefixes of parameters that are all secret or part of a signature (lower case).
SECRET_PREFIXES = ("x-amz-", "x-goog-")
#: Words that make a parameter secret wherever they occur in its name (lower case).
SECRET_WORDS = ("token", "secret", "password", "passwd", "signature", "credential", "api_key", "apikey", "api-key")

# A URL inside free text (a log line, an error message, a repr): scheme://, then up to
# the first blank or quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_SEPARATORS = re.compile(r"([&;])")


def secret_parameter(name: str) -> bool:
    """Whether a query parameter of this name carries a secret."""
    lowered = unquote_plus(name).strip().lower()
    return (
        lowered in SECRET_PARAMETERS
        or lowered.startswith(SECRET_PREFIXES)
        or any(word in lowered for word in SECRET_WORDS)
    )


def _redact_parameters(text: str) -> str:
    pieces = _SEPARATORS.split(text)
    for position, piece in enumerate(pieces):
        name, equals, value = piece.partition("=")
        if equals and value and secret_parameter(name):
            pieces[position] = f"{name}={MASK}"
    return "".join(pieces)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query parameters masked (see the module)."""
    text = str(url)
    base, hash_mark, fragment = text.partition("#")
    base, question_mark, query = base.partition("?")
    scheme_end = base.find("://")
    if scheme_end >= 0:
        prefix, rest = base[: scheme_end + 3], base[scheme_end + 3 :]
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
        base = prefix + authority + slash + path
    elif "@" in base.partition("/")[0]:  # no scheme ("user:pw@host"): whatever precedes '@' may be a secret
        base = f"{MASK}@{base.rpartition('@')[2]}"
    if question_mark:
        query = _redact_parameters(query)
    if hash_mark and "=" in fragment:  # e.g. "#access_token=..." of an OAuth redirect
        fragment = _redact_parameters(fragment)
    return base + question_mark + query + hash_mark + fragment


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (log lines, error messages)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


__all__ = [
    "MASK",
    "SECRET_PARAMETERS",
    "SECRET_PREFIXES",
    "SECRET_WORDS",
    "redact_text",
    "redact_url",
    "secret_parameter",
]
