"""Settings from the environment: every variable parsed, every bad value named."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from paglets_artifacts import Settings, SettingsError
from paglets_artifacts.settings import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL, PREFIX


def env(**values: str) -> dict[str, str]:
    return {(name if name == "REDIS_URL" else PREFIX + name): value for name, value in values.items()}


def test_an_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert settings.namespace == DEFAULT_NAMESPACE
    assert (settings.max_artifact_bytes, settings.quota_bytes, settings.spool_ttl_seconds) == (
        1024**3,
        10 * 1024**3,
        86400.0,
    )
    assert settings.fsync is True
    assert settings.allowed_roots == () and settings.allowed_hosts == () and settings.host_api_keys == ()


def test_every_variable_is_read_and_parsed(tmp_path):
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    settings = Settings.from_env(
        env(
            REDIS_URL="redis://:pw@redis.example:6380/2",
            NAMESPACE="tenant-1",
            STORE_ROOT=str(tmp_path / "store"),
            HOST_URL="http://host:8470/",
            MAX_ARTIFACT_BYTES="2048",
            QUOTA_BYTES="4096",
            SPOOL_TTL_SECONDS="1.5",
            FSYNC="off",
            ALLOWED_ROOTS=f"{root_a}{os.pathsep}{os.pathsep}{root_b}",
            ALLOWED_HOSTS="http://peer:1/, https://other",
            HOST_API_KEYS="http://peer:1=key1, https://other=key2",
            API_KEY=" s3cret ",
            JOB_RETENTION_SECONDS="60",
            TRANSFER_TIME_LIMIT_SECONDS="7",
            MAINTENANCE_TIME_LIMIT_SECONDS="8",
            MAX_RETRIES="0",
            MIN_BACKOFF_MS="10",
            MAX_BACKOFF_MS="20",
            HEARTBEAT_TIMEOUT_MS="30",
            MAINTENANCE_CHANCE="40",
            PROGRESS_EVERY_BYTES="50",
            OWNER_TOMBSTONE_SECONDS="90",
            UPLOAD_IDLE_SECONDS="2.5",
            UPLOAD_MIN_BYTES_PER_SECOND="0",
            UPLOADS_PER_CLIENT="3",
            UPLOAD_SLOT_WAIT_SECONDS="4",
            SWEEP_SCHEDULE="*/5 * * * *",
            REINDEX_SCHEDULE="600",
            METRICS_PORT="9100",
            LOG_FORMAT="json",
        )
    )
    assert settings.redis_url == "redis://:pw@redis.example:6380/2"
    assert settings.namespace == "tenant-1"
    assert settings.store_root == tmp_path / "store"
    assert settings.host_url == "http://host:8470"
    assert (settings.max_artifact_bytes, settings.quota_bytes, settings.spool_ttl_seconds) == (2048, 4096, 1.5)
    assert settings.fsync is False
    assert settings.allowed_roots == (root_a.resolve(), root_b.resolve())
    assert settings.allowed_hosts == ("http://peer:1", "https://other")
    assert settings.host_api_keys == (("http://peer:1", "key1"), ("https://other", "key2"))
    assert settings.api_key == "s3cret"
    assert (
        settings.job_retention_seconds,
        settings.transfer_time_limit_seconds,
        settings.maintenance_time_limit_seconds,
    ) == (
        60.0,
        7.0,
        8.0,
    )
    assert (settings.max_retries, settings.min_backoff_ms, settings.max_backoff_ms) == (0, 10, 20)
    assert (settings.heartbeat_timeout_ms, settings.maintenance_chance, settings.progress_every_bytes) == (30, 40, 50)
    assert settings.owner_tombstone_seconds == 90.0
    assert (settings.upload_idle_seconds, settings.upload_min_bytes_per_second) == (2.5, 0)
    assert (settings.uploads_per_client, settings.upload_slot_wait_seconds) == (3, 4.0)
    assert (settings.sweep_schedule, settings.reindex_schedule) == ("*/5 * * * *", "600")
    assert (settings.metrics_port, settings.log_format) == (9100, "json")


@pytest.mark.parametrize("value,expected", [("none", None), ("Unlimited", None), ("0", 0), (" 12 ", 12)])
def test_quota_accepts_none_for_no_quota(value, expected):
    assert Settings.from_env(env(QUOTA_BYTES=value)).quota_bytes == expected


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_fsync_accepts_the_usual_booleans(value, expected):
    assert Settings.from_env(env(FSYNC=value)).fsync is expected


def test_store_root_expands_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.from_env(env(STORE_ROOT="~/store")).store_root == tmp_path / "store"


def test_empty_values_keep_the_default_but_empty_allowed_roots_means_none():
    settings = Settings.from_env(env(NAMESPACE="", MAX_RETRIES="", ALLOWED_ROOTS=""))
    assert settings.namespace == DEFAULT_NAMESPACE and settings.max_retries == 5
    assert settings.allowed_roots == ()


def test_unix_socket_redis_urls_are_accepted():
    assert Settings.from_env(env(REDIS_URL="unix:///run/redis.sock?db=1")).redis_url == "unix:///run/redis.sock?db=1"


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv(PREFIX + "NAMESPACE", "from-process")
    assert Settings.from_env().namespace == "from-process"


def test_keyword_overrides_win_over_the_environment():
    settings = Settings.from_env(env(NAMESPACE="from-env"), namespace="override", max_retries=9)
    assert (settings.namespace, settings.max_retries) == ("override", 9)


@pytest.mark.parametrize(
    "name,value",
    [
        ("REDIS_URL", "localhost"),
        ("REDIS_URL", "redis://"),
        ("HOST_URL", "not a url"),
        ("NAMESPACE", "two words"),
        ("MAX_ARTIFACT_BYTES", "1.5"),
        ("MAX_ARTIFACT_BYTES", "-1"),
        ("MAX_ARTIFACT_BYTES", "1GB"),
        ("QUOTA_BYTES", "-5"),
        ("QUOTA_BYTES", "lots"),
        ("SPOOL_TTL_SECONDS", "0"),
        ("SPOOL_TTL_SECONDS", "-3"),
        ("SPOOL_TTL_SECONDS", "nan"),
        ("SPOOL_TTL_SECONDS", "inf"),
        ("SPOOL_TTL_SECONDS", "a day"),
        ("JOB_RETENTION_SECONDS", "0"),
        ("FSYNC", "maybe"),
        ("ALLOWED_HOSTS", "ftp://peer"),
        ("ALLOWED_HOSTS", "peer:8470"),
        ("MAX_RETRIES", "-1"),
        ("METRICS_PORT", "http"),
        ("SWEEP_SCHEDULE", "every minute"),
        ("SWEEP_SCHEDULE", "0.5"),
        ("REINDEX_SCHEDULE", "61 * * * *"),
        ("LOG_FORMAT", "xml"),
        ("UPLOAD_IDLE_SECONDS", "0"),
        ("UPLOAD_IDLE_SECONDS", "never"),
        ("UPLOAD_MIN_BYTES_PER_SECOND", "-1"),
        ("UPLOADS_PER_CLIENT", "many"),
        ("UPLOAD_SLOT_WAIT_SECONDS", "-2"),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_the_variable(name, value):
    variable = name if name == "REDIS_URL" else PREFIX + name
    with pytest.raises(SettingsError, match=variable) as caught:
        Settings.from_env({variable: value})
    assert repr(value) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", ["http://peer", "=key-only", "http://peer=", "http://peer=a,garbage"])
def test_bad_host_api_keys_name_the_variable_but_never_echo_the_value(value):
    with pytest.raises(SettingsError, match=PREFIX + "HOST_API_KEYS") as caught:
        Settings.from_env(env(HOST_API_KEYS=value))
    assert value not in str(caught.value)
    assert "***" in str(caught.value)


def test_host_api_keys_may_contain_equals_signs():
    settings = Settings.from_env(env(HOST_API_KEYS="http://peer:1=c2VjcmV0==,https://b=x=y"))
    assert settings.host_api_keys == (("http://peer:1", "c2VjcmV0=="), ("https://b", "x=y"))


def test_to_env_round_trips_through_from_env(tmp_path):
    original = Settings(
        redis_url="redis://r:1/3",
        namespace="ns",
        store_root=tmp_path / "s",
        host_url="http://me:1",
        max_artifact_bytes=0,
        quota_bytes=None,
        spool_ttl_seconds=12.5,
        fsync=False,
        allowed_roots=((tmp_path / "a").resolve(), (tmp_path / "b").resolve()),
        allowed_hosts=("http://p:1", "https://q"),
        host_api_keys=(("http://p:1", "k=="), ("https://q", "other")),
        api_key="secret",
        max_retries=2,
        sweep_schedule="0 * * * *",
        log_format="json",
    )
    exported = original.to_env()
    assert all(isinstance(value, str) for value in exported.values())
    assert exported["REDIS_URL"] == "redis://r:1/3"
    assert exported[PREFIX + "QUOTA_BYTES"] == "none"
    assert exported[PREFIX + "FSYNC"] == "0"
    assert Settings.from_env(exported) == original
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_host_key_matches_by_origin():
    settings = Settings(host_api_keys=(("http://Peer.Example", "k1"), ("https://peer.example:8443", "k2")))
    assert settings.host_key("http://peer.example:80/artifacts/abc") == "k1"
    assert settings.host_key("https://PEER.example:8443/") == "k2"
    assert settings.host_key("https://peer.example") == ""  # port 443, not 8443
    assert settings.host_key("http://peer.example:8080") == ""


@pytest.mark.parametrize(
    "url",
    [
        "http://peer.example:99999/artifacts/ab",  # a port out of range
        "http://peer.example:notaport/artifacts/ab",
        "http://[::1/artifacts/ab",  # no URL at all
    ],
)
def test_a_url_without_a_valid_origin_gets_no_key_and_is_not_allowed(url):
    """One origin rule (paglets_artifacts.origins) for a host's key and the allow-list: a URL
    whose port cannot be parsed matches no configured host in either, even one spelled alike."""
    from paglets_artifacts.http.remote import host_allowed
    from paglets_artifacts.origins import url_origin

    hosts = ("http://peer.example", "http://peer.example:99999", "http://peer.example:notaport", "http://[::1")
    settings = Settings(host_api_keys=tuple((host, "k") for host in hosts))
    assert url_origin(url) is None
    assert settings.host_key(url) == ""  # before, a ValueError here while the allow-list said no
    assert not host_allowed(url, hosts)


def test_host_key_and_the_allow_list_agree_on_every_origin():
    from paglets_artifacts.http.remote import host_allowed

    hosts = ("http://peer.example", "https://peer.example:8443", "http://other.example:8470")
    settings = Settings(host_api_keys=tuple((host, f"key-{i}") for i, host in enumerate(hosts)))
    urls = [
        "http://PEER.example:80/a",
        "http://peer.example:8080/a",
        "https://peer.example/a",
        "https://peer.example:8443/a",
        "http://other.example:8470/a",
        "http://other.example/a",
        "http://peer.example:65536/a",
        "http://peer.example:-1/a",
    ]
    for url in urls:
        assert bool(settings.host_key(url)) == host_allowed(url, hosts), url


def test_documented_lists_every_setting_with_its_variable():
    rows = Settings.documented()
    assert len(rows) == len(dataclasses.fields(Settings))
    variables = [variable for variable, _, _ in rows]
    assert variables[0] == "REDIS_URL"
    assert all(variable.startswith(PREFIX) for variable in variables[1:])
    assert len(set(variables)) == len(variables)
    assert all(doc for _, _, doc in rows)
    assert dict((variable, default) for variable, default, _ in rows)[PREFIX + "SPOOL_TTL_SECONDS"] == "86400.0"
    assert dict((variable, default) for variable, default, _ in rows)[PREFIX + "ALLOWED_ROOTS"] == ""


def test_settings_are_frozen_and_with_changes_copies():
    settings = Settings()
    changed = settings.with_changes(namespace="other", store_root=Path("/s"))
    assert (changed.namespace, changed.store_root) == ("other", Path("/s"))
    assert settings.namespace == DEFAULT_NAMESPACE
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.namespace = "x"  # type: ignore[misc]


@pytest.mark.parametrize("relation", ["contains", "equals", "inside", "inside through a link"])
def test_an_allowed_root_that_contains_or_lies_inside_the_store_is_refused(tmp_path, relation):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    (tmp_path / "link").symlink_to(store)
    root = {
        "contains": tmp_path,
        "equals": store,
        "inside": store / "blobs",
        "inside through a link": tmp_path / "link" / "metadata",
    }[relation]
    environ = {PREFIX + "STORE_ROOT": str(store), PREFIX + "ALLOWED_ROOTS": f"/srv/elsewhere:{root}"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert message.startswith(PREFIX + "ALLOWED_ROOTS=")
    assert PREFIX + "STORE_ROOT" in message and str(store) in message
    with pytest.raises(SettingsError):
        Settings(store_root=store, allowed_roots=(root,))  # however the settings are made


def test_an_allowed_root_beside_the_store_is_accepted(tmp_path):
    settings = Settings.from_env(
        {PREFIX + "STORE_ROOT": str(tmp_path / "store"), PREFIX + "ALLOWED_ROOTS": str(tmp_path / "store-files")}
    )  # a prefix, not a parent
    assert settings.allowed_roots == ((tmp_path / "store-files").resolve(),)


def test_workers_and_the_cli_refuse_an_allowed_root_around_the_store(settings, workers, tmp_path):
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    overlapping = {PREFIX + "ALLOWED_ROOTS": str(tmp_path)}  # tmp_path holds the store
    process = workers.start(extra_env=overlapping)
    assert process.wait(timeout=60) != 0
    log = workers.logs()
    assert PREFIX + "ALLOWED_ROOTS" in log and PREFIX + "STORE_ROOT" in log
    for command in (["serve"], ["worker"], ["check"]):
        result = CliRunner().invoke(cli.app, command, env={**settings.to_env(), **overlapping})
        assert result.exit_code == cli.EXIT_CONFIG, (command, result.stdout, result.stderr)
        assert PREFIX + "STORE_ROOT" in result.stderr
