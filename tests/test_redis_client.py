"""The one Redis client factory: plain URLs as redis-py reads them, Sentinel URLs parsed
here, and a clear ``SettingsError`` naming ``REDIS_URL`` for a URL that cannot be used."""

from __future__ import annotations

import socket
import subprocess
import sys
import types

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from conftest import ROOT
from paglets_artifacts import Settings, SettingsError
from paglets_artifacts.jobs.client import connect
from paglets_artifacts.redaction import redact_text, redact_url
from paglets_artifacts.redis_client import (
    DEFAULT_SENTINEL_PORT,
    KEEPALIVE_OPTIONS,
    connect_redis,
    is_sentinel_url,
    keepalive_options,
    parse_sentinel_url,
)


def test_a_sentinel_url_names_its_sentinels_service_db_and_the_data_nodes_password():
    parsed = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/artifacts/2")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert (parsed.service_name, parsed.db, parsed.password, parsed.username, parsed.tls) == (
        "artifacts",
        2,
        "s3cret",
        None,
        False,
    )


def test_a_tls_sentinel_url_with_a_user_default_port_and_query_options():
    parsed = parse_sentinel_url("rediss+sentinel://app:pw@sentinel-a,sentinel-b:5000/mymaster?ssl_cert_reqs=none")
    assert parsed.sentinels == (("sentinel-a", DEFAULT_SENTINEL_PORT), ("sentinel-b", 5000))
    assert (parsed.username, parsed.password, parsed.tls, parsed.db) == ("app", "pw", True, 0)
    assert parsed.options == {"ssl_cert_reqs": "none"}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:pw@h1:26379/", "no service name"),
        ("redis+sentinel://:pw@h1:26379", "no service name"),
        ("redis+sentinel://:pw@h1:99999/svc", "has no valid port"),
        ("redis+sentinel://:pw@h1:abc/svc", "has no valid port"),
        ("redis+sentinel://:pw@h1:26379,,h2:26379/svc", "expected Sentinel addresses"),
        ("redis+sentinel://:pw@:26379/svc", "has no host"),
        ("redis+sentinel://:pw@h1:26379/svc/zero", "whole-number db"),
        ("redis+sentinel://:pw@h1:26379/svc/0/extra", "whole-number db"),
        ("redis+sentinel://:pw@h1:26379/svc?socket_timeout=soon", "query option 'socket_timeout'"),
    ],
)
def test_a_bad_sentinel_url_is_a_settings_error_naming_the_problem_without_the_password(url, problem):
    with pytest.raises(SettingsError) as caught:
        connect_redis(Settings(redis_url=url))
    message = str(caught.value)
    assert message.startswith("REDIS_URL=") and problem in message
    assert "pw" not in message and "***" in message


def test_an_unknown_scheme_is_a_settings_error_listing_the_schemes():
    with pytest.raises(SettingsError, match="unknown scheme 'http'.*redis\\+sentinel://"):
        connect(Settings(redis_url="http://:pw@127.0.0.1:6379/0"))


def test_a_plain_url_redis_py_refuses_is_a_settings_error():
    with pytest.raises(SettingsError, match="REDIS_URL=.* is invalid: Invalid value for 'socket_timeout'"):
        connect_redis(Settings(redis_url="redis://127.0.0.1:6379/0?socket_timeout=soon"))


def test_a_plain_url_keeps_the_host_side_timeouts(redis_url):
    client = connect(Settings(redis_url=redis_url, redis_timeout_seconds=2.5))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 2.5)
        assert kwargs["socket_keepalive"] is True and kwargs["socket_keepalive_options"] == KEEPALIVE_OPTIONS
        assert client.ping()
    finally:
        client.close()


def test_a_connection_has_tcp_keepalive_on_its_socket(redis_url):
    client = connect_redis(Settings(redis_url=redis_url))
    try:
        assert client.ping()
        connection = client.connection_pool.get_connection()
        try:
            sock = connection._sock
            assert sock is not None
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            for option, value in KEEPALIVE_OPTIONS.items():
                assert sock.getsockopt(socket.IPPROTO_TCP, option) == value
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()


def test_keepalive_options_a_platform_lacks_are_left_out():
    linux = types.SimpleNamespace(TCP_KEEPIDLE=4, TCP_KEEPINTVL=5, TCP_KEEPCNT=6)
    assert keepalive_options(linux) == {4: 10, 5: 5, 6: 3}
    without_idle = types.SimpleNamespace(TCP_KEEPINTVL=5, TCP_KEEPCNT=6)
    assert keepalive_options(without_idle) == {5: 5, 6: 3}
    assert keepalive_options(types.SimpleNamespace()) == {}


def test_a_sentinel_client_asks_the_sentinels_with_their_own_password_and_tls():
    settings = Settings(
        redis_url="rediss+sentinel://:node-pw@127.0.0.1:1,127.0.0.1:2/svc/3?ssl_ca_certs=/etc/ca.pem",
        redis_sentinel_password="sentinel-pw",
        redis_sentinel_tls=True,
        redis_timeout_seconds=4.0,
    )
    client = connect(settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
    node = pool.connection_kwargs
    assert (node["password"], node["db"], node["socket_timeout"], node["ssl_ca_certs"]) == (
        "node-pw",
        3,
        4.0,
        "/etc/ca.pem",
    )
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert node["socket_keepalive"] is True
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    first = sentinels[0].connection_pool.connection_kwargs
    assert (first["password"], first["socket_timeout"], first["ssl_ca_certs"]) == ("sentinel-pw", 4.0, "/etc/ca.pem")
    assert sentinels[0].connection_pool.connection_class is redis.SSLConnection


def test_sentinel_urls_and_the_sentinel_password_are_redacted():
    url = "redis+sentinel://app:hunter2@10.0.0.1:26379,10.0.0.2:26379/artifacts/0"
    assert redact_url(url) == "redis+sentinel://app:***@10.0.0.1:26379,10.0.0.2:26379/artifacts/0"
    assert "hunter2" not in redact_text(f"cannot reach {url}: refused")
    assert "hunter2" not in redact_url(url.replace("redis+", "rediss+"))
    settings = Settings(redis_url=url, redis_sentinel_password="s3ntinel")
    assert "hunter2" not in repr(settings) and "s3ntinel" not in repr(settings)
    assert settings.redacted().redis_sentinel_password == "***"


def test_sentinel_settings_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis+sentinel://h1:26379/svc",
            "PAGLETS_ARTIFACTS_REDIS_SENTINEL_PASSWORD": "pw",
            "PAGLETS_ARTIFACTS_REDIS_SENTINEL_TLS": "yes",
        }
    )
    assert is_sentinel_url(settings.redis_url)
    assert (settings.redis_sentinel_password, settings.redis_sentinel_tls) == ("pw", True)
    assert Settings.from_env(settings.to_env()) == settings


def test_a_worker_and_the_scheduler_with_an_unusable_redis_url_stop_with_one_line(settings, tmp_path):
    env = {**settings.with_changes(redis_url="redis+sentinel://:pw@h1:26379/").to_env(), "PYTHONPATH": str(ROOT)}
    for args in (
        ["-m", "dramatiq", "workers.registry", "--processes", "1", "--threads", "1"],
        ["-m", "workers.scheduler"],
    ):
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode != 0, args
        assert "REDIS_URL='redis+sentinel://:***@h1:26379/' is invalid: no service name" in done.stderr, args
        assert "Traceback" not in done.stderr, args


def test_the_cli_shows_a_sentinel_url_masked_and_refuses_an_unusable_one_with_exit_code_3():
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    runner = CliRunner()
    shown = runner.invoke(cli.app, ["config", "--json"], env={"REDIS_URL": "redis+sentinel://:pw@h1:26379,h2/svc/1"})
    assert shown.exit_code == 0, shown.output
    assert "redis+sentinel://:***@h1:26379,h2/svc/1" in shown.stdout and "pw@" not in shown.stdout
    refused = runner.invoke(cli.app, ["jobs"], env={"REDIS_URL": "redis+sentinel://:pw@h1:26379/"})
    assert refused.exit_code == 3
    assert (
        "configuration error: REDIS_URL='redis+sentinel://:***@h1:26379/' is invalid: no service name" in refused.stderr
    )
