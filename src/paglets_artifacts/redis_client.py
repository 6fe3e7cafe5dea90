"""The one way every process builds its Redis client: from a plain URL or through Sentinel.

``REDIS_URL`` takes

- a plain URL, as redis-py reads it: ``redis://[[user]:password@]host:port/db``,
  ``rediss://`` (TLS), ``unix:///path/redis.sock?db=0``;
- a Sentinel URL: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://``: TLS to the data nodes). The hosts are the Sentinels; the
  userinfo is the data nodes' (the master's and replicas'); ``service`` is the name the
  Sentinels monitor (``sentinel monitor <service> ...``). The query string's connection
  options (``ssl_ca_certs``, ``ssl_cert_reqs``, ...) go to the data nodes, and to the
  Sentinels too when they speak TLS. The Sentinels' own password and TLS are the settings
  ``PAGLETS_ARTIFACTS_REDIS_SENTINEL_PASSWORD`` and ``PAGLETS_ARTIFACTS_REDIS_SENTINEL_TLS``.

A Sentinel client asks the Sentinels for the current master on every new connection, so
after a failover its next command reaches the promoted replica; a command that meets
the dead master (or no master yet, while the Sentinels elect one) raises
``redis.ConnectionError``, which callers already treat as Redis being unreachable for a
moment. A URL that cannot be used is a :class:`~paglets_artifacts.settings.SettingsError`
naming ``REDIS_URL`` and what is wrong, its secrets masked.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.sentinel import Sentinel

from .redaction import redact_url
from .settings import Settings, SettingsError

#: Schemes of a plain Redis URL (redis-py's own).
PLAIN_SCHEMES = ("redis", "rediss", "unix")
#: Schemes of a Sentinel URL; the second speaks TLS to the data nodes.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: Port of a Sentinel address given without one (Sentinel's default).
DEFAULT_SENTINEL_PORT = 26379
#: TCP keepalive of every connection: a peer that vanished without closing it (a machine
#: lost, a network cut) is noticed after about 10 + 3 x 5 s of silence, even by a client
#: without a socket timeout (a worker's), instead of Linux's two hours.
#: An option the platform's :mod:`socket` lacks is left at the system's default.
KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))


def keepalive_options(module: Any = socket) -> dict[int, int]:
    """The :data:`KEEPALIVE` options ``module`` (the platform's :mod:`socket`) has, by number."""
    return {option: value for name, value in KEEPALIVE if (option := getattr(module, name, None)) is not None}


#: :func:`keepalive_options` of this platform: what every connection sets.
KEEPALIVE_OPTIONS: dict[int, int] = keepalive_options()


@dataclass(frozen=True)
class SentinelURL:
    """A parsed Sentinel URL.

    Parameters:
      sentinels(tuple[tuple[str, int], ...]): the Sentinels' addresses.
      service_name(str): the master's name the Sentinels monitor.
      db(int): the database number.
      username(str|None): the data nodes' ACL user.
      password(str|None): the data nodes' password.
      tls(bool): whether the data nodes speak TLS (``rediss+sentinel://``).
      options(dict[str, Any]): connection options of the query string.
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict[str, Any] | None = None


def _invalid(url: str, problem: str) -> SettingsError:
    return SettingsError(f"REDIS_URL={redact_url(url)!r} is invalid: {problem}")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL (``SettingsError`` naming the problem)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise _invalid(url, f"a Sentinel URL starts with {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = []
    for item in authority.split(","):
        address = item.strip()
        if not address:
            raise _invalid(url, "expected Sentinel addresses host:port[,host:port...] before the service name")
        host, colon, port_text = address.rpartition(":") if not address.endswith("]") else (address, "", "")
        if not colon:
            host, port_text = address, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")
        if not host:
            raise _invalid(url, f"Sentinel address {address!r} has no host")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _invalid(url, f"Sentinel address {address!r} has no valid port (1-65535)")
        sentinels.append((host, int(port_text)))
    segments = [segment for segment in path.split("/")]
    service = unquote(segments[0]) if segments else ""
    if not service:
        raise _invalid(url, "no service name: expected .../<service_name>[/<db>] after the Sentinel addresses")
    db = 0
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise _invalid(url, f"expected /<service_name>[/<db>] with a whole-number db, got /{path}")
    if len(segments) == 2:
        db = int(segments[1])
    options: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        parser: Callable[[str], Any] | None = URL_QUERY_ARGUMENT_PARSERS.get(name)  # type: ignore[assignment]
        try:
            options[name] = parser(values[0]) if parser else values[0]
        except (TypeError, ValueError):
            raise _invalid(url, f"query option {name!r} has an invalid value") from None
    if "db" in options:
        db = int(options.pop("db"))
    return SentinelURL(
        sentinels=tuple(sentinels),
        service_name=service,
        db=db,
        username=username,
        password=password,
        tls=scheme.lower() == "rediss+sentinel",
        options=options,
    )


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Sentinels rather than one Redis server."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def connect_redis(
    settings: Settings,
    url: str | None = None,
    *,
    timeout: float | None = None,
    health_check_interval: int = 0,
) -> redis.Redis:
    """A Redis client for ``url`` (default ``settings.redis_url``), plain or through Sentinel.

    ``timeout`` bounds connecting and every command (``None``: no bound, as a worker's
    broker polls with short commands of its own); ``health_check_interval`` (seconds, 0:
    off) makes an idle connection PING before it is used again; every connection has TCP
    keepalive (:data:`KEEPALIVE_OPTIONS`). The Sentinels get the same
    timeout, and ``settings.redis_sentinel_password`` / ``redis_sentinel_tls``.
    """
    target = url or settings.redis_url
    common: dict[str, Any] = {
        "health_check_interval": health_check_interval,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE_OPTIONS,
    }
    if timeout is not None:
        common["socket_timeout"] = timeout
        common["socket_connect_timeout"] = timeout
    if not is_sentinel_url(target):
        scheme = target.partition("://")[0].lower()
        if scheme not in PLAIN_SCHEMES:
            shown = ", ".join(s + "://" for s in (*PLAIN_SCHEMES, *SENTINEL_SCHEMES))
            raise _invalid(target, f"unknown scheme {scheme!r}: expected one of {shown}")
        try:
            return redis.Redis.from_url(target, **common)
        except ValueError as exc:
            raise _invalid(target, str(exc)) from None
    parsed = parse_sentinel_url(target)
    options = dict(parsed.options or {})
    sentinel_kwargs: dict[str, Any] = {key: value for key, value in common.items() if key.startswith("socket_")}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    if settings.redis_sentinel_tls:
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({key: value for key, value in options.items() if key.startswith("ssl_")})
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    node: dict[str, Any] = {**options, **common, "db": parsed.db}
    if parsed.username:
        node["username"] = parsed.username
    if parsed.password:
        node["password"] = parsed.password
    if parsed.tls:
        node["ssl"] = True
    return sentinel.master_for(parsed.service_name, redis_class=redis.Redis, **node)


__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "KEEPALIVE",
    "KEEPALIVE_OPTIONS",
    "PLAIN_SCHEMES",
    "SENTINEL_SCHEMES",
    "SentinelURL",
    "connect_redis",
    "is_sentinel_url",
    "keepalive_options",
    "parse_sentinel_url",
]
